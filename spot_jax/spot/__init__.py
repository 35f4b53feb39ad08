"""SPoT: a library of source-task prompts, prompt similarities and retrieval (DESIGN.md §7)."""
from spot_jax.spot.library import LibraryEntry, PromptLibrary
from spot_jax.spot.retrieval import rank_sources, weighted_average_init
from spot_jax.spot.similarity import (SIMILARITIES, c_average, c_concat, cos_avg_tokens, cos_per_token,
                                      e_average, e_concat, on_similarity, on_window_similarities,
                                      prompt_similarity, similarities_to, similarity_matrix)

__all__ = [
    "LibraryEntry", "PromptLibrary", "rank_sources", "weighted_average_init", "SIMILARITIES",
    "c_average", "c_concat", "cos_avg_tokens", "cos_per_token", "e_average", "e_concat",
    "on_similarity", "on_window_similarities", "prompt_similarity", "similarities_to", "similarity_matrix",
]
