"""Running a trained model: scores for many products (evaluation, training) or one (the CLI, serving)."""
