"""The local training backend: Hugging Face models trained with a plain PyTorch + PEFT loop.

Modules (each imports torch / transformers / peft itself; nothing in tunepipe imports this
package at module level, so the data stages never pay for them):

* :mod:`tunepipe.hf.device`: which device, dtype and thread count a run uses.
* :mod:`tunepipe.hf.models`: the base model (a packaged GGUF converted once into the shared cache,
  a Hugging Face id from the local cache, or a folder) and :func:`~tunepipe.hf.models.load_model`
  for a trained artifact.
* :mod:`tunepipe.hf.render`: training records -> token ids and labels (loss only on trained
  assistant turns).
* :mod:`tunepipe.hf.batching`: the seeded per-epoch order and padded batches.
* :mod:`tunepipe.hf.checkpoint`: resumable checkpoints in the stage's scratch folder.
* :mod:`tunepipe.hf.settings`: the training parameters, checked, and the resume fingerprint.
* :mod:`tunepipe.hf.forward`: LoRA (or full) trainable weights and the training loss.
* :mod:`tunepipe.hf.loop`: the training loop (:class:`~tunepipe.hf.loop.TrainingRun`); its
  :class:`~tunepipe.hf.world.World` (:mod:`tunepipe.hf.world`) is one process, or Ray Train's
  workers in :mod:`tunepipe.hf.distributed` (with :mod:`tunepipe.hf.ray_link` and
  :mod:`tunepipe.hf.node_files`).
* :mod:`tunepipe.hf.artifact`: the trained model's folder (weights, ``model.json``, metrics, loss curve).
* :mod:`tunepipe.hf.trainer`: :func:`~tunepipe.hf.trainer.train_local`, what the backend calls.
* :mod:`tunepipe.hf.generate` and :mod:`tunepipe.hf.replier`: replies from a trained model or its
  base (batched, left padding, the artifact's chat template).
"""
