"""One model, many requests: a queue in front of a replier.

Generation runs one call at a time (one model: two calls at once would only share its CPUs or
memory), each on a new thread that ends with it, so the event loop stays free meanwhile and no
thread outlives its call: torch's OpenMP keeps a pool of threads per thread that ran it, and once
two pools outnumber the cores libgomp stops spinning and every step slows (32 tokens of
SmolLM2-135M on 2 cores: 1.5 s with one pool alive, 2.2 s with two).

Prompts that wait together with the same :class:`~tunepipe.replies.Decoding` are answered by one
``replier.reply(batch, decoding)`` call (up to ``max_batch``): SmolLM2-135M on 2 cores gives 21
completion tokens/s to one client and 63 to 16 (``benchmarks/bench_serve.py``). A stream holds
the model alone, from its first piece to its last.

The oldest waiting request always goes next; prompts with its decoding join it from anywhere in the
queue. A request whose client has gone while it waited is dropped unasked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tunepipe.replies import Decoding, Prompt, Replier, Reply, stream

_END = object()


@dataclass(eq=False)
class _Request:
    """A prompt to reply to in a batch, or (``solo``) a function to run alone."""

    future: asyncio.Future[Any]
    prompt: Prompt | None = None
    decoding: Decoding | None = None
    solo: Callable[[], Any] | None = None


@dataclass
class Batcher:
    """Queues requests for ``replier`` and runs them one call at a time (see the module's doc).

    ``gather_s``: how long an idle batcher waits after a first request for others sent with it.
    """

    replier: Replier
    max_batch: int = 8
    gather_s: float = 0.01
    _queue: asyncio.Queue[_Request] | None = field(default=None, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def reply(self, prompt: Prompt, decoding: Decoding) -> Reply:
        """The reply to ``prompt``, generated in a batch with others that wait with the same decoding."""
        return await self._submit(_Request(self._future(), prompt, decoding))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run in its turn, alone (loading the model, say)."""
        return await self._submit(_Request(self._future(), solo=fn))

    async def stream(self, prompt: Prompt, decoding: Decoding) -> AsyncIterator[str | Reply]:
        """The reply's text in pieces as the replier streams it, then its :class:`Reply` when the
        replier reports one. Leaving the loop early stops generation at the next piece."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        gone = threading.Event()

        def produce() -> None:
            def send(item: Any) -> None:
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, item)
                except RuntimeError:  # the loop has closed: the server stopped, nobody reads
                    gone.set()

            gen = stream(self.replier, prompt, decoding)
            try:
                while not gone.is_set():
                    send(next(gen))
            except StopIteration as end:
                send(end.value)
            except BaseException as e:  # noqa: BLE001 - raised again in the consumer
                send(e)
            finally:
                gen.close()
                send(_END)

        job = _Request(self._future(), solo=produce)
        self._enqueue(job)
        try:
            while (item := await self._next(pieces, job.future)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    yield item
        finally:
            gone.set()
            job.future.cancel()  # still waiting: it will not start

    async def close(self) -> None:
        """Stop taking jobs; what waits is cancelled (generation in progress finishes on its own)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    # --- the queue --------------------------------------------------------------------------------

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, job: _Request) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(self._queue))
        self._queue.put_nowait(job)

    async def _submit(self, job: _Request) -> Any:
        self._enqueue(job)
        return await job.future

    @staticmethod
    async def _next(pieces: asyncio.Queue[Any], future: asyncio.Future[Any]) -> Any:
        """The next item of a stream; _END when its job ended without sending one (cancelled)."""
        if not pieces.empty() or not future.done():
            getter = asyncio.ensure_future(pieces.get())
            await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
        return pieces.get_nowait() if not pieces.empty() else _END

    async def _work(self, queue: asyncio.Queue[_Request]) -> None:
        waiting: list[_Request] = []
        while True:
            if not waiting:
                waiting.append(await queue.get())
                await asyncio.sleep(self.gather_s)  # requests sent together arrive together
            while not queue.empty():
                waiting.append(queue.get_nowait())
            waiting = [j for j in waiting if not j.future.done()]  # their clients have gone
            if waiting:
                batch = self._take(waiting)
                waiting = [j for j in waiting if all(j is not b for b in batch)]
                await self._run(batch)

    def _take(self, waiting: list[_Request]) -> list[_Request]:
        """The oldest job, and the prompts waiting with its decoding (up to max_batch)."""
        first = waiting[0]
        if first.solo is not None:
            return [first]
        same = [j for j in waiting if j.solo is None and j.decoding == first.decoding]
        return same[:max(1, self.max_batch)]

    async def _run(self, batch: list[_Request]) -> None:
        first = batch[0]
        try:
            if first.solo is not None:
                results: list[Any] = [await asyncio.wrap_future(in_new_thread(first.solo))]
            else:
                results = await asyncio.wrap_future(in_new_thread(self.replier.reply, [j.prompt for j in batch],
                                                                  first.decoding))
        except Exception as e:  # noqa: BLE001 - handed to the requests that asked
            if len(batch) > 1:  # one bad prompt must not fail the others: each alone
                for job in batch:
                    await self._run([job])
                return
            results = [e]
        for job, result in zip(batch, results):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def in_new_thread(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` on a new (daemon) thread that ends with it; its outcome as a future."""
    done: Future[Any] = Future()

    def work() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits
            done.set_exception(e)

    threading.Thread(target=work, name="tunepipe-model", daemon=True).start()
    return done
