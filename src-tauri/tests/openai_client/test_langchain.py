"""Checks the server with LangChain's OpenAI chat model (`langchain-openai`).

Usage: python3 test_langchain.py BASE_URL MODEL_ID
(BASE_URL like http://127.0.0.1:3000/v1). Exits non-zero on the first failure.

The served model has random weights: its free text is gibberish, so these checks are about the
protocol (shapes, parsing, validation). Tool calls and structured output use `tool_choice`
required or named, and schemas that are strict (no extra properties) and bounded (short strings,
small integer ranges), so that the constrained decoding always finishes a valid reply.
"""

import asyncio
import inspect
import sys
import warnings
from importlib.metadata import version
from typing import Literal

import openai
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from schemas import Place, TimeArgs, WeatherArgs

SEEDS = 20

# include_raw's result dict holds the parsed Place where langchain's own type says None.
warnings.filterwarnings("ignore", message="Pydantic serializer warnings")


class GetWeather(WeatherArgs):
    """The weather in a city for some days."""


@tool
def get_time(zone: Literal["utc", "local"]) -> str:
    """The time now in a zone."""
    return "12:00" if zone == "utc" else "13:00"


ARGS = {"GetWeather": GetWeather, "get_time": TimeArgs}


def chat(base_url: str, model: str, **kw) -> ChatOpenAI:
    kw.setdefault("max_tokens", 10)
    kw.setdefault("temperature", 0)
    kw.setdefault("seed", 1)
    return ChatOpenAI(base_url=base_url, api_key="none", model=model, max_retries=0, timeout=120, **kw)


def check_calls(msg: AIMessage, what) -> None:
    """A reply of exactly one tool call whose arguments validate."""
    assert msg.response_metadata.get("finish_reason") == "tool_calls", (what, msg)
    assert not msg.invalid_tool_calls, (what, msg.invalid_tool_calls)
    assert len(msg.tool_calls) == 1, (what, msg)
    call = msg.tool_calls[0]
    assert call["id"] and call["type"] == "tool_call", (what, call)
    ARGS[call["name"]].model_validate(call["args"])


def check_text(base_url: str, model: str) -> None:
    llm = chat(base_url, model, stream_usage=True)
    reply = llm.invoke("Say hello.")
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str), reply
    meta, usage = reply.response_metadata, reply.usage_metadata
    assert meta["finish_reason"] in ("stop", "length"), meta
    assert meta["model_name"] == model, meta
    assert usage["input_tokens"] > 0 and 1 <= usage["output_tokens"] <= 10, usage
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], usage
    print(f"invoke: {meta['finish_reason']}, usage {usage['input_tokens']}+{usage['output_tokens']}")

    chunks = list(llm.stream("Say hello."))
    assert all(isinstance(c, AIMessageChunk) for c in chunks), chunks
    whole = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    assert whole.content == reply.content, (whole.content, reply.content)
    assert whole.response_metadata.get("finish_reason") == meta["finish_reason"], whole
    assert whole.usage_metadata is not None, "stream_usage=True gave no usage"
    assert whole.usage_metadata["output_tokens"] == usage["output_tokens"], whole.usage_metadata
    print(f"stream: {len(chunks)} chunks, same text and usage as invoke")

    again = asyncio.run(llm.ainvoke([HumanMessage("Say hello.")]))
    assert again.content == reply.content, (again.content, reply.content)
    replies = llm.batch(["One.", "Two.", "Three."], config={"max_concurrency": 3})
    assert len(replies) == 3 and all(isinstance(r.content, str) for r in replies), replies
    print("ainvoke: same text; batch: 3 concurrent replies")

    lp = chat(base_url, model, max_tokens=4, logprobs=True, top_logprobs=2).invoke("Say hello.")
    content = lp.response_metadata["logprobs"]["content"]
    assert len(content) == lp.usage_metadata["output_tokens"], content
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content), content
    print(f"logprobs: {len(content)} tokens, e.g. {content[0]['token']!r} {content[0]['logprob']:.3f}")


def check_tools(base_url: str, model: str) -> None:
    # Sampled (temperature 1), so that each seed takes its own path through the constraint.
    llm = chat(base_url, model, max_tokens=300, temperature=1)
    tools = [GetWeather, get_time]
    question = HumanMessage("What is the weather in Paris?")
    forced = llm.bind_tools(tools, tool_choice="required", strict=True, parallel_tool_calls=False)
    seen = set()
    for seed in range(SEEDS):
        reply = forced.invoke([question], seed=seed)
        check_calls(reply, seed)
        seen.add(repr(reply.tool_calls[0]["args"]))
    assert len(seen) > 1, seen
    print(f"bind_tools(required): {SEEDS} seeds, each one call whose args validate ({len(seen)} distinct)")

    forced = llm.bind_tools(tools, tool_choice="any", strict=True, parallel_tool_calls=False)
    chunks = list(forced.stream([question]))
    whole = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    check_calls(whole, "stream")
    print(f"bind_tools stream: {len(chunks)} chunks, call {whole.tool_calls[0]['name']}")

    named = llm.bind_tools(tools, tool_choice="get_time", strict=True)
    first = named.invoke([question])
    check_calls(first, "named")
    assert first.tool_calls[0]["name"] == "get_time", first.tool_calls
    print(f"bind_tools(named get_time): {first.tool_calls[0]['args']}")

    # The agent loop: run the tool, send its result back, get a reply (free text, bounded by
    # max_tokens, then a forced further call from the same history).
    result = get_time.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.tool_call_id == first.tool_calls[0]["id"], result
    history = [question, first, result]
    answer = chat(base_url, model, max_tokens=8).bind_tools(tools).invoke(history)
    assert isinstance(answer, AIMessage), answer
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls"), answer
    assert answer.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"], (answer, first)
    again = llm.bind_tools(tools, tool_choice="required", strict=True, parallel_tool_calls=False)
    check_calls(again.invoke(history), "after the result")
    print(
        f"tool round trip: result {result.content!r} sent back as a ToolMessage, "
        f"reply {answer.response_metadata['finish_reason']}, a further forced call valid"
    )


def check_structured(base_url: str, model: str) -> None:
    llm = chat(base_url, model, max_tokens=300, temperature=1)
    default = inspect.signature(ChatOpenAI.with_structured_output).parameters["method"].default
    print(f"with_structured_output: this version's default method is {default!r}")
    runs = [
        ("default", llm.with_structured_output(Place)),
        ("json_schema", llm.with_structured_output(Place, method="json_schema")),
        ("function_calling", llm.with_structured_output(Place, method="function_calling", strict=True)),
    ]
    for name, runnable in runs:
        seen = set()
        for seed in range(SEEDS):
            place = runnable.invoke("Describe a place.", seed=seed)
            assert isinstance(place, Place), (name, seed, place)
            seen.add(repr(place))
        assert len(seen) > 1, (name, seen)
        print(f"with_structured_output({name}): {SEEDS} seeds, each a validated Place, e.g. {place!r}")

    raw = llm.with_structured_output(Place, method="json_schema", include_raw=True).invoke("A place.")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Place), raw
    assert raw["raw"].response_metadata["finish_reason"] == "stop", raw
    Place.model_validate_json(raw["raw"].content)
    streamed = list(llm.with_structured_output(Place, method="json_schema").stream("A place."))
    assert streamed and isinstance(streamed[-1], Place), streamed
    print(f"include_raw: raw JSON {raw['raw'].content!r}; stream: ends with a Place")


def check_errors(base_url: str, model: str) -> None:
    try:
        chat(base_url, model, extra_body={"mirostat": 2}).invoke("Hi")
        raise AssertionError("an unknown field was accepted")
    except openai.BadRequestError as e:
        assert "mirostat" in str(e), e
    try:
        chat(base_url, model, max_tokens=1).invoke("word " * 5000)
        raise AssertionError("an over-long prompt was accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded" and "context" in str(e), e
        # langchain-openai tells a full context by the code in the exception's text.
        assert isinstance(e, ContextOverflowError), f"not a ContextOverflowError: {e!r}"
    print(
        "errors: 400 unknown field as openai.BadRequestError; over-long prompt as "
        "langchain's ContextOverflowError (code context_length_exceeded)"
    )


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    versions = ", ".join(f"{p} {version(p)}" for p in ("langchain-openai", "langchain-core", "openai"))
    print(f"versions: {versions}")
    check_text(base_url, model)
    check_tools(base_url, model)
    check_structured(base_url, model)
    check_errors(base_url, model)
    print("langchain-openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
