"""The OpenAI-compatible gateway, driven by the official ``openai`` client against a real server
(gRPC and HTTP from one process), compared with what gRPC's Generate serves for the same request."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import openai
import pytest
import torch
from torch.utils.hooks import RemovableHandle

from editors import Steering
from editors.toyworld import TOY_MODEL_DIR, WORLD_FILE, World
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.gateway.app import FINISH_REASONS
from service.hosting import ModelHost
from service.server import ScalpelServer, ServerConfig
from tests.scheduler_hold import scheduler_held
from tests.test_registry import snapshot

PROMPT = "The capital of Riia is"


@pytest.fixture
def gateway(db_url):
    """Generation on the serving process's scheduler (--no-engine-process): the hang-up tests hold
    that scheduler between steps and count its rows (tests/test_engine_process.py covers the same
    cancellation in an engine process)."""
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=db_url,
        metrics_address=None,
        http_address="127.0.0.1:0",
        engine_process=False,
    )
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("app", "reader", "bootstrap")
    _, admin_secret = server.registry.create_key("admin", "admin", "bootstrap")
    grpc_client = ScalpelClient(f"127.0.0.1:{server.port}", admin_secret)
    http = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=secret, max_retries=0)
    yield server, http, grpc_client
    http.close()
    grpc_client.close()
    server.stop(grace=0)


def _steered_version(grpc_client: ScalpelClient) -> int:
    vector = torch.randn(128, generator=torch.Generator().manual_seed(3)) * 4
    edit = grpc_client.create_edit("toy", Steering(site="blocks.2.hook_resid_pre", vector=vector))
    return grpc_client.create_version("toy", 0, append=[edit.id]).number


def test_completions_equal_grpc_generate_and_name_the_version(gateway) -> None:
    server, http, grpc_client = gateway
    steered = _steered_version(grpc_client)
    grpc_client.promote("toy", steered, alias="staging", force=True, reason="gateway test")
    base = grpc_client.generate("toy", PROMPT, version=0, max_tokens=6)
    edited = grpc_client.generate("toy", PROMPT, version=steered, max_tokens=6)
    assert base.text != edited.text  # the edit changes what the model says
    for model, expected, version in (
        ("toy", base, 0),
        ("toy@production", base, 0),
        (f"toy@{steered}", edited, steered),
        ("toy@staging", edited, steered),
    ):
        reply = http.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)
        assert reply.choices[0].text == expected.text, model
        assert reply.system_fingerprint == f"models/toy/versions/{version}"
        assert reply.model == model
        assert reply.choices[0].finish_reason == FINISH_REASONS[expected.finish_reason]
        assert reply.usage.completion_tokens == len(expected.token_ids)
        assert reply.usage.prompt_tokens == len(server.hosts["toy"].tokenizer(PROMPT)["input_ids"])
    raw = http.completions.with_raw_response.create(model="toy@staging", prompt=PROMPT, max_tokens=2, temperature=0)
    assert raw.headers["x-scalpel-version"] == f"models/toy/versions/{steered}"
    listed = {model.id for model in http.models.list()}
    assert {"toy", "toy@production", "toy@staging"} <= listed


def test_usage_counts_the_prompt_tokens_that_the_prefix_cache_gave(gateway) -> None:
    """A 36-token prompt sent again takes its first 32 tokens' keys and values from the prefix
    cache: OpenAI's ``prompt_tokens_details.cached_tokens`` says so over HTTP (whole and streamed),
    ``GenerateDone.cached_prompt_tokens`` over gRPC, also when a stop string ends the stream; the
    text is the same as the first time."""
    server, http, grpc_client = gateway
    tokenizer = server.hosts["toy"].tokenizer
    symbols = World.load(TOY_MODEL_DIR / WORLD_FILE).symbols
    prompt = " ".join(symbols[:33] + symbols[:2])  # induction carries the copy on
    assert len(tokenizer(prompt)["input_ids"]) == 36
    first = http.completions.create(model="toy", prompt=prompt, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # nothing stored for it yet
    again = http.completions.create(model="toy", prompt=prompt, max_tokens=4, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == 32 and again.choices[0].text == first.choices[0].text
    chunks = list(
        http.completions.create(
            model="toy", prompt=prompt, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 32
    generated = grpc_client.generate("toy", prompt, version=0, max_tokens=4)
    assert generated.cached_prompt_tokens == 32 and generated.text == first.choices[0].text
    stop = first.choices[0].text.split()[0]
    stopped = grpc_client.generate("toy", prompt, version=0, max_tokens=4, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.cached_prompt_tokens == 32


def test_a_prompt_given_as_token_ids_is_the_same_prompt_as_its_text(gateway) -> None:
    """OpenAI's API takes a prompt as token ids, or a list of such prompts, and so does gRPC's
    Generate (``prompt_token_ids``): each answers as its text does, and the usage counts its ids.
    Ids outside the vocabulary, an empty list, a mix of text and ids, and both forms in one gRPC
    request are refused (400, INVALID_ARGUMENT), naming the problem."""
    server, http, grpc_client = gateway
    host = server.hosts["toy"]
    ids = host.tokenizer(PROMPT)["input_ids"]
    other = host.tokenizer("The capital of Muford is")["input_ids"]
    texts = http.completions.create(
        model="toy", prompt=[PROMPT, "The capital of Muford is"], max_tokens=5, temperature=0
    )
    one = http.completions.create(model="toy", prompt=ids, max_tokens=5, temperature=0)
    assert one.choices[0].text == texts.choices[0].text and one.usage.prompt_tokens == len(ids)
    several = http.completions.create(model="toy", prompt=[ids, other], max_tokens=5, temperature=0)
    assert [c.text for c in several.choices] == [c.text for c in texts.choices]
    assert several.usage.prompt_tokens == texts.usage.prompt_tokens == len(ids) + len(other)
    vocab = host.model.config.vocab_size
    for prompt, message in (
        ([*ids, vocab], f"in \\[0, {vocab}\\)"),
        ([ids, []], "empty list"),
        ([], "empty list"),
        ([PROMPT, 5], "prompt"),
        ([True, 3], "prompt"),
    ):
        with pytest.raises(openai.BadRequestError, match=message):
            http.completions.create(model="toy", prompt=prompt, max_tokens=2)
    assert grpc_client.generate("toy", ids, version=0, max_tokens=5).text == texts.choices[0].text
    for options in ({"prompt_token_ids": [*ids, vocab]}, {"prompt_token_ids": ids, "prompt": PROMPT}):
        with pytest.raises(grpc.RpcError) as caught:
            list(grpc_client.inference.Generate(pb.GenerateRequest(model="models/toy", max_tokens=2, **options)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token" in caught.value.details()
    assert host.forward(lambda: host.scheduler.requests) == 0


def test_streamed_completions_and_chat_carry_the_same_text(gateway) -> None:
    _, http, grpc_client = gateway
    whole = http.completions.create(model="toy", prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(
        http.completions.create(
            model="toy", prompt=PROMPT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.system_fingerprint == "models/toy/versions/0" for c in chunks)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # the last chunk: usage alone

    messages = [{"role": "user", "content": PROMPT}]
    chat = http.chat.completions.create(model="toy", messages=messages, max_tokens=5, temperature=0)
    expected = grpc_client.generate("toy", f"user: {PROMPT}\nassistant:", version=0, max_tokens=5)
    assert chat.choices[0].message.content == expected.text  # the toy model has no chat template
    assert chat.choices[0].message.role == "assistant"
    deltas = list(
        http.chat.completions.create(model="toy", messages=messages, max_tokens=5, temperature=0, stream=True)
    )
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == expected.text
    assert deltas[-1].choices[0].finish_reason == FINISH_REASONS[expected.finish_reason]


def test_echo_scores_the_prompt_as_lm_eval_asks_and_prefixes_the_completion(gateway) -> None:
    """``echo`` with ``logprobs`` and ``max_tokens`` 0 (how lm-evaluation-harness scores a context
    and continuation through the completions API): the prompt comes back with each token's
    log-probability under the version (the first has none), summing over a continuation's tokens
    to what Score gives; with tokens to make, the completion follows the echoed prompt, whole or
    streamed; max_tokens 0 without echo is refused."""
    server, http, grpc_client = gateway
    steered = _steered_version(grpc_client)
    host = server.hosts["toy"]
    context, continuation = PROMPT, "Pimir"
    scored = http.completions.create(
        model=f"toy@{steered}", prompt=f"{context} {continuation}", max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = scored.choices[0]
    assert choice.text == f"{context} {continuation}" and choice.finish_reason == "length"
    assert scored.usage.completion_tokens == 0
    lp = choice.logprobs
    ids = host.tokenizer(f"{context} {continuation}")["input_ids"]
    assert len(lp.tokens) == len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == choice.text and lp.text_offset[1] == len(lp.tokens[0])
    assert all(len(top) == 2 for top in lp.top_logprobs[1:]) and lp.top_logprobs[0] is None
    context_tokens = len(host.tokenizer(context)["input_ids"])
    expected = host.score(steered, context, [continuation])[0]
    assert sum(lp.token_logprobs[context_tokens:]) == pytest.approx(expected, abs=1e-4)
    assert all(t <= 0 for t in lp.token_logprobs[1:])

    plain = http.completions.create(model="toy", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1)
    echoed = http.completions.create(model="toy", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, echo=True)
    prompt_tokens = len(host.tokenizer(PROMPT)["input_ids"])
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.choices[0].logprobs.token_logprobs[prompt_tokens:] == pytest.approx(
        plain.choices[0].logprobs.token_logprobs, abs=1e-5
    )
    options = {"max_tokens": 4, "temperature": 0, "echo": True, "stream": True}
    streamed = list(http.completions.create(model="toy", prompt=PROMPT, **options))
    assert streamed[0].choices[0].text.startswith(PROMPT)
    assert "".join(c.choices[0].text for c in streamed) == PROMPT + plain.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        http.completions.create(model="toy", prompt=PROMPT, max_tokens=0)
    # echo alone makes no token, yet options a stream would refuse are refused for it too
    vocab = host.model.config.vocab_size
    for bad, match in (
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"logit_bias": {str(vocab): 1.0}}, "logit_bias"),
        ({"extra_body": {"top_k": vocab + 1}}, "top_k"),
    ):
        with pytest.raises(openai.BadRequestError, match=match):
            http.completions.create(model="toy", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, **bad)
    # a batch of prompts of different lengths (as lm-eval sends them) shares forwards: each as alone
    batch = [PROMPT, f"{context} {continuation}", "Riia"]
    together = http.completions.create(model="toy", prompt=batch, max_tokens=0, echo=True, logprobs=1)
    for text, choice in zip(batch, sorted(together.choices, key=lambda c: c.index), strict=True):
        alone = http.completions.create(model="toy", prompt=text, max_tokens=0, echo=True, logprobs=1).choices[0]
        assert choice.text == text and choice.logprobs.tokens == alone.logprobs.tokens
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(alone.logprobs.token_logprobs[1:], abs=1e-5)


def test_logprobs_sampling_options_and_several_choices(gateway) -> None:
    _, http, grpc_client = gateway
    reply = http.completions.create(model="toy", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    logprobs = reply.choices[0].logprobs
    tokens = reply.usage.completion_tokens
    assert len(logprobs.token_logprobs) == tokens == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(
        len(top) == 2 and max(top.values()) >= lp - 1e-6
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True)
    )
    chat = http.chat.completions.create(
        model="toy",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(
        len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in content
    )

    penalised = http.completions.create(
        model="toy", prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"repetition_penalty": 2.0}
    )
    assert (
        penalised.choices[0].text
        == grpc_client.generate("toy", PROMPT, version=0, max_tokens=6, repetition_penalty=2.0).text
    )
    first = grpc_client.generate("toy", PROMPT, version=0, max_tokens=1).token_ids[0]
    openai_options = {"presence_penalty": 1.0, "frequency_penalty": 0.5, "logit_bias": {str(first): -100}}
    adjusted = http.completions.create(model="toy", prompt=PROMPT, max_tokens=6, temperature=0, **openai_options)
    over_grpc = grpc_client.generate(
        "toy", PROMPT, version=0, max_tokens=6, presence_penalty=1.0, frequency_penalty=0.5, logit_bias={first: -100}
    )
    assert adjusted.choices[0].text == over_grpc.text and over_grpc.token_ids[0] != first
    two = http.completions.create(model="toy", prompt=PROMPT, max_tokens=5, temperature=1.0, top_p=0.9, n=2, seed=11)
    assert [c.index for c in two.choices] == [0, 1] and 2 <= two.usage.completion_tokens <= 10
    again = http.completions.create(model="toy", prompt=PROMPT, max_tokens=5, temperature=1.0, top_p=0.9, n=2, seed=11)
    assert [c.text for c in again.choices] == [c.text for c in two.choices]  # same seed, same draws
    batch = http.completions.create(model="toy", prompt=[PROMPT, "The capital of Osk is"], max_tokens=3, temperature=0)
    assert [c.text for c in batch.choices] == [
        grpc_client.generate("toy", p, version=0, max_tokens=3).text for p in (PROMPT, "The capital of Osk is")
    ]


def test_refusals_are_openai_errors_and_change_nothing(gateway, caplog) -> None:
    server, http, _ = gateway
    before = snapshot(server.registry)
    bad_key = openai.OpenAI(base_url=str(http.base_url), api_key="sk_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model="toy", prompt=PROMPT)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        http.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.NotFoundError):
        http.completions.create(model="toy@nosuchalias", prompt=PROMPT)
    with pytest.raises(openai.NotFoundError):
        http.completions.create(model="toy@999", prompt=PROMPT)
    for options in (
        {"temperature": -1},
        {"presence_penalty": 2.5},
        {"logit_bias": {"not a token": 1}},
        {"logit_bias": {"999999": 1}},
        {"max_tokens": 100000},
        {"n": 99},
    ):
        with pytest.raises(openai.BadRequestError):
            http.completions.create(model="toy", prompt=PROMPT, **options)
    with pytest.raises(openai.BadRequestError, match="tools"):
        http.chat.completions.create(
            model="toy",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert snapshot(server.registry) == before
    with caplog.at_level(logging.INFO, logger="scalpel.access"):
        http.completions.create(model="toy", prompt=PROMPT, max_tokens=1)
    line = json.loads([r.getMessage() for r in caplog.records if r.name == "scalpel.access"][-1])
    assert line["method"] == "POST /v1/completions" and line["code"] == 200
    assert line["caller"] == "app" and line["model"] == "toy"
    assert http.api_key not in caplog.text


def test_a_client_that_hangs_up_mid_stream_frees_its_rows(gateway) -> None:
    server, http, _ = gateway
    host = server.hosts["toy"]
    slowed = host.model.register_forward_pre_hook(_slow)
    stream = http.completions.create(
        model="toy", prompt=PROMPT, max_tokens=100, temperature=0, stream=True, n=2, extra_body={"ignore_eos": True}
    )
    assert next(iter(stream)).choices[0].text
    _hanging_up_frees(host, slowed, rows=2, hang_up=stream.close)  # both choices still have most tokens to make


def _slow(*_: object) -> None:
    """A forward pre-hook: until it is removed, each step takes 20 ms, so 100 tokens outlast the
    client's first read (or its hang-up) by far."""
    threading.Event().wait(0.02)


def _hanging_up_frees(host: ModelHost, slowed: RemovableHandle, rows: int, hang_up: Callable[[], None]) -> None:
    """With ``rows`` rows of one request in flight: ``hang_up`` (the client goes away) drops them
    all at the next step, unfinished, and counts them cancelled."""
    scheduler = host.scheduler
    with scheduler_held(host):  # the rows cannot finish meanwhile
        slowed.remove()
        assert scheduler.requests == rows
        cancelled = scheduler.cancelled
        hang_up()
        for _ in range(400):  # a bounded wait for the mechanism (the hang-up reaching the rows), not a latency bar
            if scheduler.abandoned == rows:
                break
            threading.Event().wait(0.05)
        assert scheduler.abandoned == rows
    assert host.forward(lambda: scheduler.requests) == 0  # dropped at the next step, unfinished
    assert scheduler.cancelled == cancelled + rows


def test_a_refused_choice_takes_the_choices_already_started_with_it(gateway) -> None:
    server, http, _ = gateway
    host = server.hosts["toy"]
    too_long = " ".join(["Riia"] * (host.context_length + 10))
    with pytest.raises(openai.BadRequestError, match="tokens"):
        http.completions.create(model="toy", prompt=[PROMPT, too_long], max_tokens=100, extra_body={"ignore_eos": True})
    # the first prompt's row had joined: it leaves at the next step instead of running unread
    host.forward(lambda: None)  # a job runs before that step's drop: wait for one full step
    assert host.forward(lambda: host.scheduler.requests) == 0
    assert host.scheduler.cancelled >= 1


def test_a_reply_starts_on_the_loop_when_its_set_up_reads_nothing(gateway) -> None:
    """A completion's set-up (tokenising, joining the batch) runs on the gateway's event loop
    when its key was verified recently and its version is compiled (ModelHost.ready), as gRPC's
    Generate does, streamed or whole; a version not compiled yet on a worker thread. The answers
    are the same either way."""
    server, http, grpc_client = gateway
    host = server.hosts["toy"]
    server.keys.cache_seconds = 600  # the key stays verified between the calls below, however slow the machine
    version = _steered_version(grpc_client)
    assert not host.ready(None, version)
    threads: list[str] = []
    generate = host.generate

    def spied(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return generate(*args, **kwargs)

    host.generate = spied  # type: ignore[method-assign]
    try:
        texts = []
        for stream in (True, True, False):
            reply = http.completions.create(
                model=f"toy@{version}", prompt=PROMPT, max_tokens=6, temperature=0, stream=stream
            )
            texts.append("".join(chunk.choices[0].text for chunk in reply) if stream else reply.choices[0].text)
    finally:
        del host.generate
    loop = server.gateway._thread.name
    assert threads[0] != loop  # the version was compiled first, off the loop
    assert threads[1] == loop  # then compiled, and the key cached: nothing to read
    assert threads[2] == loop  # a whole reply too: it waits for its tokens on the loop
    assert texts[0] == texts[1] == texts[2] and texts[0]


def test_a_streamed_reply_interleaves_its_choices_as_they_are_made(gateway) -> None:
    """With n choices, each choice's tokens are sent as they are made: the second choice's first
    token does not wait for the first choice's end (each choice's own events stay in order)."""
    _, http, _ = gateway
    options = {"model": "toy", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "n": 3}
    whole = http.completions.create(**options, extra_body={"ignore_eos": True})
    order: list[tuple[int, str | None]] = []
    texts = {0: "", 1: "", 2: ""}
    # the later choices join within 8 decode steps (the admission rule), long before 12 tokens end the first
    stream = http.completions.create(**options, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        for choice in chunk.choices:
            order.append((choice.index, choice.finish_reason))
            texts[choice.index] += choice.text
    first_end = next(i for i, (_, reason) in enumerate(order) if reason is not None)
    assert {index for index, _ in order[:first_end]} == {0, 1, 2}  # every choice had started by then
    assert [reason for _, reason in order].count("length") == 3
    assert all(texts[c.index] == c.text for c in whole.choices) and whole.choices[0].text


def test_whole_replies_in_flight_hold_no_worker_thread(gateway) -> None:
    """48 non-streamed completions are in the batch at once: a request waiting for its tokens holds
    no thread (before, each held one of the worker pool's 40 and the rest waited for a thread)."""
    server, _, grpc_client = gateway
    host = server.hosts["toy"]
    _, secret = server.registry.create_key("many", "reader", "bootstrap")
    requests = 48

    def slow(*_: object) -> None:  # each step takes 40 ms until all have joined: 100 tokens outlast
        threading.Event().wait(0.04)  # the 48 requests' arrival by far

    def complete(_: int) -> str:
        body = {"model": "toy", "prompt": PROMPT, "max_tokens": 100, "temperature": 0, "ignore_eos": True}
        call = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v1/completions",
            json.dumps(body).encode(),
            {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(call, timeout=120) as reply:
            return json.loads(reply.read())["choices"][0]["text"]

    expected = grpc_client.generate("toy", PROMPT, version=0, max_tokens=100, ignore_eos=True).text
    slowed = host.model.register_forward_pre_hook(slow)
    try:
        with ThreadPoolExecutor(requests) as pool:
            texts = pool.map(complete, range(requests))
            most = 0
            for _ in range(1200):  # a bounded wait for the mechanism (every request joined), not a latency bar
                most = max(most, host.scheduler.requests)
                if most == requests:
                    break
                threading.Event().wait(0.05)
            slowed.remove()
            assert most == requests
            assert set(texts) == {expected}
    finally:
        slowed.remove()


def _raw_post(port: int, path: str, body: bytes, api_key: str, length: int | None = None) -> socket.socket:
    """A request on a plain socket, so a test can hang up (or never send the body it announced)."""
    connection = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


def test_a_client_that_hangs_up_before_a_whole_reply_frees_its_rows(gateway) -> None:
    """Issue 37, defect 8: a non-streaming request whose client went away stops at the next step,
    as a stream does, instead of running to its end unread."""
    server, http, _ = gateway
    host = server.hosts["toy"]
    slowed = host.model.register_forward_pre_hook(_slow)
    body = {"model": "toy", "prompt": PROMPT, "max_tokens": 100, "temperature": 0, "ignore_eos": True}
    connection = _raw_post(server.http_port, "/v1/completions", json.dumps(body).encode(), http.api_key)
    for _ in range(400):  # bounded wait for the mechanism (the row joined the batch), not a latency bar
        if host.forward(lambda: host.scheduler.requests) == 1:
            break
        threading.Event().wait(0.05)  # the HTTP server may not have parsed the request yet
    _hanging_up_frees(host, slowed, rows=1, hang_up=connection.close)


def test_the_gateways_edges_answer_in_openais_shape_and_never_500(gateway) -> None:
    """Issue 37, defect 8: integers past int64, huge version numbers, bad JSON, wrong methods,
    unknown routes and bodies over the limit are each a 4xx with OpenAI's error body."""
    server, http, _ = gateway
    before = snapshot(server.registry)
    auth = {"Authorization": f"Bearer {http.api_key}", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{server.http_port}"

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(base + path, data=body, method=method, headers=auth)
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def completion(**fields: object) -> bytes:
        return json.dumps({"model": "toy", "prompt": PROMPT, "max_tokens": 2, **fields}).encode()

    cases = {
        "token id past int64": ("POST", "/v1/completions", completion(prompt=[2**70]), 400),
        "token id past the vocabulary": ("POST", "/v1/completions", completion(prompt=[2**40]), 400),
        "seed past int64": ("POST", "/v1/completions", completion(seed=2**70), 400),
        "version past any number": ("POST", "/v1/completions", completion(model="toy@99999999999999999999"), 404),
        "body not JSON": ("POST", "/v1/completions", b'{"model": "toy", prompt', 400),
        "wrong method": ("GET", "/v1/completions", None, 405),
        "unknown route": ("GET", "/v1/nothing", None, 404),
        "unknown route, POST": ("POST", "/v2/completions", completion(), 404),
    }
    for what, (method, path, body, status) in cases.items():
        code, reply = call(method, path, body)
        assert code == status, (what, code, reply)
        assert set(reply) == {"error"} and reply["error"]["message"] and reply["error"]["type"], (what, reply)
    limit = server.config.max_message_bytes
    connection = _raw_post(server.http_port, "/v1/completions", b"", http.api_key, length=limit + 1)
    reply = connection.makefile("rb").read().decode()
    connection.close()
    assert reply.startswith("HTTP/1.1 413") and '"request_too_large"' in reply  # refused before the body came
    assert snapshot(server.registry) == before


def test_alternatives_read_as_the_chosen_token_does(gateway) -> None:
    """Issue 37, defect 8: a greedy token is its own top alternative, with the same text (the
    leading space included), in completions and chat alike."""
    _, http, _ = gateway
    more = {"ignore_eos": True}  # past the fact's full stop, into words that start with a space
    reply = http.completions.create(
        model="toy", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, extra_body=more
    )
    logprobs = reply.choices[0].logprobs
    assert any(token.startswith(" ") for token in logprobs.tokens)  # the case that differed
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        assert max(top, key=top.get) == token, (token, top)
    chat = http.chat.completions.create(
        model="toy",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=more,
    )
    for entry in chat.choices[0].logprobs.content:
        assert max(entry.top_logprobs, key=lambda alt: alt.logprob).token == entry.token
