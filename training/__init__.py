"""ScalingNote training drivers: stage-1 dual towers, stage-2 query distillation, baselines, export."""
