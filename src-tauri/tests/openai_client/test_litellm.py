"""Checks the server with `litellm` (its OpenAI-compatible provider, `openai/<model>`).

Usage: python3 test_litellm.py BASE_URL MODEL_ID
(BASE_URL like http://127.0.0.1:3000/v1). Exits non-zero on the first failure.

The served model has random weights: its free text is gibberish, so these checks are about the
protocol (shapes, parsing, validation). Tool calls and structured output use `tool_choice`
required or named, and schemas that are strict (no extra properties) and bounded (short strings,
small integer ranges), so that the constrained decoding always finishes a valid reply.
"""

import asyncio
import json
import os
import sys
from importlib.metadata import version

from schemas import Place, TimeArgs, WeatherArgs

# Without this, importing litellm fetches its model price list from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402

litellm.suppress_debug_info = True  # no "Provider List" banners around the expected errors

SEEDS = 20


def strict_schema(model) -> dict:
    schema = model.model_json_schema()
    schema["additionalProperties"] = False
    return schema


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": strict_schema(WeatherArgs)}},
    {"type": "function", "function": {"name": "get_time", "description": "Time",
                                      "parameters": strict_schema(TimeArgs)}},
]
ARGS = {"get_weather": WeatherArgs, "get_time": TimeArgs}


def check_call(choice, what) -> None:
    """A reply of exactly one tool call whose arguments validate."""
    assert choice.finish_reason == "tool_calls", (what, choice)
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1, (what, choice.message)
    assert calls[0].id and calls[0].type == "function", (what, calls[0])
    ARGS[calls[0].function.name].model_validate_json(calls[0].function.arguments)


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    print(f"versions: litellm {version('litellm')}, openai {version('openai')}")
    kw = dict(model=f"openai/{model}", api_base=base_url, api_key="none", num_retries=0, timeout=120)
    hello = [{"role": "user", "content": "Say hello."}]

    plain = litellm.completion(messages=hello, max_tokens=10, temperature=0, seed=1, **kw)
    choice, u = plain.choices[0], plain.usage
    assert isinstance(plain, litellm.ModelResponse), plain
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str), choice
    assert choice.finish_reason in ("stop", "length"), choice
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 10, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    print(f"completion: {choice.finish_reason}, usage {u.prompt_tokens}+{u.completion_tokens}")

    chunks = list(litellm.completion(messages=hello, max_tokens=10, temperature=0, seed=1, stream=True,
                                     stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content, (text, choice.message.content)
    built = litellm.stream_chunk_builder(chunks, messages=hello)
    assert built.choices[0].message.content == choice.message.content, built
    assert built.choices[0].finish_reason == choice.finish_reason, built
    assert built.usage.completion_tokens == u.completion_tokens, built.usage
    print(f"stream: {len(chunks)} chunks, same text, finish and usage as the plain reply")

    again = asyncio.run(litellm.acompletion(messages=hello, max_tokens=10, temperature=0, seed=1, **kw))
    assert again.choices[0].message.content == choice.message.content, again
    print("acompletion: same text")

    lp = litellm.completion(messages=hello, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, **kw)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
    print(f"logprobs: {len(content)} tokens, e.g. {content[0].token!r} {content[0].logprob:.3f}")

    # Forced tool calls, sampled so that each seed takes its own path through the constraint.
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    seen = set()
    for seed in range(SEEDS):
        done = litellm.completion(messages=ask, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                  max_tokens=300, temperature=1, seed=seed, **kw)
        check_call(done.choices[0], seed)
        seen.add(done.choices[0].message.tool_calls[0].function.arguments)
    assert len(seen) > 1, seen
    print(f"tool_choice required: {SEEDS} seeds, each one call whose arguments validate ({len(seen)} distinct)")

    chunks = list(litellm.completion(messages=ask, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                     max_tokens=300, seed=7, stream=True, **kw))
    built = litellm.stream_chunk_builder(chunks, messages=ask)
    check_call(built.choices[0], "stream")
    print(f"tool stream: {len(chunks)} chunks rebuilt into {built.choices[0].message.tool_calls[0].function.name}")

    named = litellm.completion(messages=ask, tools=TOOLS, max_tokens=300, seed=1,
                               tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
    check_call(named.choices[0], "named")
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time", call
    print(f"tool_choice named: get_time {call.function.arguments}")

    # The agent loop: the assistant's call and the tool's result sent back, then a reply.
    history = ask + [
        named.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
    ]
    answer = litellm.completion(messages=history, tools=TOOLS, max_tokens=8, temperature=0, seed=1, **kw)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls"), answer
    assert answer.usage.prompt_tokens > named.usage.prompt_tokens, (answer.usage, named.usage)
    forced = litellm.completion(messages=history, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                max_tokens=300, seed=2, **kw)
    check_call(forced.choices[0], "after the result")
    print(f"tool round trip: reply {answer.choices[0].finish_reason}, a further forced call valid")

    # Structured output: a pydantic class (litellm turns it into json_schema) and a raw schema.
    seen = set()
    for seed in range(SEEDS):
        done = litellm.completion(messages=[{"role": "user", "content": "Describe a place as JSON."}],
                                  response_format=Place, max_tokens=300, temperature=1, seed=seed, **kw)
        assert done.choices[0].finish_reason == "stop", (seed, done.choices[0])
        seen.add(Place.model_validate_json(done.choices[0].message.content).model_dump_json())
    assert len(seen) > 1, seen
    print(f"response_format=Place: {SEEDS} seeds, each reply validated, e.g. {done.choices[0].message.content!r}")
    raw = litellm.completion(
        messages=[{"role": "user", "content": "The time zone as JSON."}], max_tokens=100, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "zone", "strict": True,
                                                                "schema": strict_schema(TimeArgs)}}, **kw)
    TimeArgs.model_validate(json.loads(raw.choices[0].message.content))
    print(f"response_format json_schema dict: {raw.choices[0].message.content!r}")

    # Errors arrive as litellm's own exception classes.
    try:
        litellm.completion(messages=hello, max_tokens=1, extra_body={"mirostat": 2}, **kw)
        raise AssertionError("an unknown field was accepted")
    except litellm.BadRequestError as e:
        assert "mirostat" in str(e), e
    try:
        litellm.completion(messages=[{"role": "user", "content": "word " * 5000}], max_tokens=1, **kw)
        raise AssertionError("an over-long prompt was accepted")
    except litellm.BadRequestError as e:
        assert e.status_code == 400 and "context" in str(e), e
        # litellm tells a full context by known phrases of the message ("prompt is too long").
        assert isinstance(e, litellm.ContextWindowExceededError), f"not ContextWindowExceededError: {e!r}"
    print(
        "errors: 400 unknown field as BadRequestError, over-long prompt as "
        "ContextWindowExceededError"
    )
    print("litellm client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
