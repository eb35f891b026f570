"""Offline retrieval evaluation on BEIR datasets: dense (index + query encoder) and BM25."""
