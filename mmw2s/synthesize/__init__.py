"""`mmw2s synthesize`: LLaVA-style instruction data (conversation, detail, reasoning) from captions.

Module map: ``config`` (the stage's schema), ``captions`` (objects and relations read out of
caption text), ``templates`` (the model-free synthesizer), ``prompts`` (prompt files -> chat
messages), ``cache`` (responses on disk), ``backends`` (template, OpenAI-compatible API, local
causal LM), ``run`` (shards in, LLaVA JSON + image shards out), ``answers`` (the weak teacher on
the VQA suite: answers read off a caption).
"""
