"""Past runs of a pipeline, read from its run records and artifacts: ``pipeline runs``,
``pipeline logs`` and ``pipeline diff``. Nothing here runs a stage or writes to the cache.

* :mod:`~tunepipe.history.runs`: the records of one pipeline file, newest first, tolerant of old
  and damaged ones; :mod:`~tunepipe.history.ids`: short run ids and their prefixes.
* :mod:`~tunepipe.history.changes`: what changed in a stage's key parts between two runs.
* :mod:`~tunepipe.history.reports`: the evaluate stages' reports a run left in the cache.
* :mod:`~tunepipe.history.significance`: a metric's change against the bootstrap noise.
* :mod:`~tunepipe.history.listing` / :mod:`~tunepipe.history.diff`: the two views, as data.
* :mod:`~tunepipe.history.logs`: find, print and follow a stage's log.
* :mod:`~tunepipe.history.render`: text and Markdown.
"""
