"""Running the speech LLM: audio front end, model, prompt formats, generation engines."""
