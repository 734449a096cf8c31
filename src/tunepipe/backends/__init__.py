"""Model backends: one seam for training, replying and exporting, whatever runs the model.

* :mod:`~tunepipe.backends.contract`: the :class:`~tunepipe.backends.contract.Backend` Protocol,
  and what it declares (:class:`~tunepipe.backends.contract.Settings`) and is handed
  (:class:`~tunepipe.backends.contract.TrainData`).
* :mod:`~tunepipe.backends.registry`: the built-ins (``local``, ``openai``) and the installed ones
  (entry-point group ``tunepipe.backends``), each loaded on first use.
* :mod:`~tunepipe.backends.params`: what the backends add to the train and evaluate stages'
  parameters (schema, operational paths, secrets) and the refusal of one backend's settings
  given with another.
* :mod:`~tunepipe.backends.local` and :mod:`~tunepipe.backends.openai`: the built-ins, thin over
  :mod:`tunepipe.hf` and :mod:`tunepipe.openai_ft`.

The train and evaluate stages dispatch through the registry (a dict by name), never by testing
names. The model a backend trains is described by its model reference (:mod:`tunepipe.modelref`),
and replies come through :class:`tunepipe.replies.Replier`. Nothing here imports torch or openai
at module level. See ``docs/backends.md`` for adding one.
"""
