"""The OpenAI training backend: upload the data, create one fine-tuning job, follow it, keep the model.

Entry points (the ``openai`` backend, :mod:`tunepipe.backends.openai`, calls them):

* :func:`tunepipe.openai_ft.backend.train_openai` runs the whole job, exactly once per stage key.
* :func:`tunepipe.openai_ft.estimate.estimate` gives the billable tokens and cost before anything runs.
* :class:`tunepipe.openai_ft.replier.OpenAIReplier` replies from a fine-tuned model or its base.

Modules, one job each: ``config`` (parameters into settings, job metadata, suffix), ``client`` (the
API key, the SDK client, error mapping), ``state`` (the job id and file ids in the stage's scratch,
written durably), ``prepare`` (the exact bytes to upload), ``upload`` (find-or-upload by content),
``estimate`` (tokens and cost), ``jobs`` (find, decide, create once, poll, events), ``results``
(pure parsing of what a finished job returns, and the artifact files), ``chat`` (chat completions
at a bounded concurrency, with retries) and ``replier``.

Nothing here imports ``openai`` at module level: the SDK takes about 2 s to import, and neither
``pipeline --help`` nor a cached rerun should pay for it.
"""
