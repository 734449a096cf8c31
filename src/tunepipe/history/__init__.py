"""Past runs of a pipeline, read from its run records and artifacts: ``pipeline runs``,
``pipeline logs``, ``pipeline diff`` and ``pipeline compare``. Nothing here runs a stage or writes
to the cache (``compare --html`` writes only the page it is asked for).

* :mod:`~tunepipe.history.runs`: the records of one pipeline file, newest first, tolerant of old
  and damaged ones; :mod:`~tunepipe.history.ids`: short run ids and their prefixes.
* :mod:`~tunepipe.history.changes`: what changed in a stage's key parts between two runs.
* :mod:`~tunepipe.history.reports`: the evaluate stages' reports a run left in the cache.
* :mod:`~tunepipe.history.significance`: a metric's change against the bootstrap noise.
* :mod:`~tunepipe.history.listing` / :mod:`~tunepipe.history.diff`: the two views, as data.
* :mod:`~tunepipe.history.logs`: find, print and follow a stage's log.
* :mod:`~tunepipe.history.render`: text and Markdown.
* ``pipeline compare``: :mod:`~tunepipe.history.sweep` (a matrix stage's branches and what they
  feed), :mod:`~tunepipe.history.training` (a train artifact's losses and curve),
  :mod:`~tunepipe.history.branches` (rows, columns, cells), :mod:`~tunepipe.history.compare`
  (the rows built from the records), :mod:`~tunepipe.history.leader` (best or tied),
  :mod:`~tunepipe.history.compare_text` and :mod:`~tunepipe.history.compare_html` (the page).
"""
