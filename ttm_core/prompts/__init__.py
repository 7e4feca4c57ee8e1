"""Step 0, prompts: the caption split into a motion prompt and one local prompt per movable object.

* ``parse``: manual object lines and strict parsing of LLM answers (JSON or the paper's format).
* ``grammar``: the schema-driven token grammar that constrains a local model's JSON answers.
* ``llm``: asking an LLM (a local transformers model or an OpenAI-compatible endpoint).
"""
