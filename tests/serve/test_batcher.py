"""The queue in front of the model: batching by decoding, one call at a time, failures kept to their
request, streams that stop when their reader leaves. A replier of plain Python stands in for the
model here (the server's tests use a real one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from tunepipe.replies import Decoding, Prompt, Reply
from tunepipe.replies import stream
from tunepipe.serve.batcher import Batcher
from tunepipe.serve.stops import StopScan, cut


class Echo:
    """Replies with the prompt's text upper-cased; records each call; ``hold`` keeps the first call
    waiting until set (so that requests pile up behind it)."""

    name = "echo"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Decoding]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.active = self.most_active = 0
        self.closed_streams = 0
        self.lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {"echo": 1}

    def info(self) -> dict[str, Any]:
        return {}

    def reply(self, prompts: Sequence[Prompt], decoding: Decoding, *, done: Any = None) -> list[Reply]:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            texts = [p.messages[-1]["content"] for p in prompts]
            self.calls.append((texts, decoding))
            self.hold.wait(10)
            if "boom" in texts:
                raise RuntimeError("boom")
            return [Reply(t.upper(), 1, len(t)) for t in texts]
        finally:
            with self.lock:
                self.active -= 1

    def stream(self, prompt: Prompt, decoding: Decoding) -> Generator[str, None, Reply]:
        try:
            for word in prompt.messages[-1]["content"].split():
                time.sleep(0.01)
                yield word + " "
        finally:
            self.closed_streams += 1
        return Reply("done", 1, 2, finish="length")

    def close(self) -> None:
        pass


def ask(text: str) -> Prompt:
    return Prompt([{"role": "user", "content": text}])


def test_requests_waiting_with_one_decoding_are_one_call_up_to_max_batch() -> None:
    echo = Echo()
    greedy, sampled = Decoding(8), Decoding(8, temperature=1.0, seed=3)

    async def main() -> list[Any]:
        batcher = Batcher(echo, max_batch=3, gather_s=0.01)
        echo.hold.clear()  # the first request holds the model while the others queue
        first = asyncio.ensure_future(batcher.reply(ask("first"), greedy))
        await asyncio.sleep(0.1)
        rest = [batcher.reply(ask(f"g{i}"), greedy) for i in range(4)] + [batcher.reply(ask("s0"), sampled)]
        tasks = [asyncio.ensure_future(r) for r in rest]
        await asyncio.sleep(0.05)
        echo.hold.set()
        out = await asyncio.gather(first, *tasks)
        await batcher.close()
        return out

    replies = asyncio.run(main())
    assert [r.text for r in replies] == ["FIRST", "G0", "G1", "G2", "G3", "S0"]
    assert echo.calls == [(["first"], Decoding(8)), (["g0", "g1", "g2"], Decoding(8)), (["g3"], Decoding(8)),
                          (["s0"], Decoding(8, temperature=1.0, seed=3))]
    assert echo.most_active == 1  # one generation at a time


def test_a_failing_prompt_fails_only_its_own_request() -> None:
    echo = Echo()

    async def main() -> list[Any]:
        batcher = Batcher(echo, max_batch=8)
        out = await asyncio.gather(*(batcher.reply(ask(t), Decoding(8)) for t in ("a", "boom", "c")),
                                   return_exceptions=True)
        await batcher.close()
        return out

    a, boom, c = asyncio.run(main())
    assert a.text == "A" and c.text == "C" and isinstance(boom, RuntimeError)
    assert echo.calls[0][0] == ["a", "boom", "c"]  # tried together first, then each alone


def test_a_request_whose_client_left_while_waiting_is_not_generated() -> None:
    echo = Echo()

    async def main() -> None:
        batcher = Batcher(echo, gather_s=0)
        echo.hold.clear()
        first = asyncio.ensure_future(batcher.reply(ask("first"), Decoding(8)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.reply(ask("gone"), Decoding(9)))
        await asyncio.sleep(0.01)
        gone.cancel()
        echo.hold.set()
        await first
        await asyncio.sleep(0.05)
        await batcher.close()

    asyncio.run(main())
    assert [texts for texts, _ in echo.calls] == [["first"]]


def test_a_stream_gives_its_pieces_then_the_reply_and_stops_when_left() -> None:
    echo = Echo()

    async def main() -> tuple[list[Any], list[Any]]:
        batcher = Batcher(echo)
        whole = [item async for item in batcher.stream(ask("one two three"), Decoding(8))]
        part = []
        stream = batcher.stream(ask("w " * 500), Decoding(8))
        async for item in stream:
            part.append(item)
            if len(part) == 2:
                break
        await stream.aclose()
        after = await batcher.reply(ask("next"), Decoding(8))  # the model is free again at once
        part.append(after)
        await batcher.close()
        return whole, part

    t0 = time.monotonic()
    whole, part = asyncio.run(main())
    assert whole[:3] == ["one ", "two ", "three "] and whole[3].text == "done" and whole[3].finish == "length"
    assert part[:2] == ["w ", "w "] and part[2].text == "NEXT"
    assert echo.closed_streams == 2 and time.monotonic() - t0 < 2  # not 500 x 10 ms


def test_a_replier_without_stream_streams_its_whole_reply() -> None:
    class Plain(Echo):
        stream = None  # type: ignore[assignment]

    gen = stream(Plain(), ask("hello"), Decoding(8))
    assert next(gen) == "HELLO"
    with pytest.raises(StopIteration) as end:
        next(gen)
    assert end.value.value.text == "HELLO"


@pytest.mark.parametrize("pieces, stops, shown, stopped", [
    (["Hello ", "wor", "ld"], ["END"], "Hello world", False),
    (["Hello E", "N", "D and more"], ["END"], "Hello ", True),
    (["a\n", "\nb"], ["\n\n"], "a", True),
    (["EN", "X"], ["END"], "ENX", False),
    (["abc"], ["b", "c"], "a", True),
])
def test_stop_sequences_cut_a_stream_where_they_cut_the_whole_text(pieces: list[str], stops: list[str], shown: str,
                                                                 stopped: bool) -> None:
    scan = StopScan(stops)
    out = "".join(scan.feed(p) for p in pieces) + ("" if scan.stopped else scan.flush())
    assert (out, scan.stopped) == (shown, stopped) == cut("".join(pieces), stops)
