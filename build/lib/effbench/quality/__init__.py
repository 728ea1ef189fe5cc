"""Quality beyond held-out perplexity: lm-eval tasks on the loaded model instance."""
