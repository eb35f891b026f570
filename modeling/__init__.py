"""Torch modeling: towers (backbone + pooling), dual towers, students and losses."""
