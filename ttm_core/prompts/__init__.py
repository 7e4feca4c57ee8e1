"""Step 0, prompts: the caption split into a motion prompt and one local prompt per movable object.

* ``parse``: manual object lines and strict parsing of LLM answers (JSON or the paper's format).
* ``llm``: asking an LLM (a local transformers model or an OpenAI-compatible endpoint).
"""
