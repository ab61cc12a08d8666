"""Checks the server with the official `openai` Python client.

Usage: python3 test_openai.py BASE_URL MODEL_ID
(BASE_URL like http://127.0.0.1:3000/v1). Exits non-zero on the first failure.
"""

import json
import sys

import openai
from openai import OpenAI

from schemas import Place, TimeArgs, WeatherArgs

SEEDS = 100


def check_structured_output(client: OpenAI, model: str) -> None:
    """json_schema through the client's own `parse` (pydantic validates every reply), for
    SEEDS seeds on the random model; json_object; a schema the grammar engine cannot use."""
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    messages = [{"role": "user", "content": "Describe a place as JSON."}]
    for seed in range(SEEDS):
        done = parse(model=model, messages=messages, response_format=Place, seed=seed, max_tokens=300)
        choice = done.choices[0]
        assert choice.finish_reason == "stop", (seed, choice)
        assert isinstance(choice.message.parsed, Place), (seed, choice.message)
    print(f"json_schema: {SEEDS} seeds, every reply parsed and validated, e.g. {choice.message.content!r}")

    obj = client.chat.completions.create(
        model=model, messages=messages, max_tokens=300, seed=3, response_format={"type": "json_object"}
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict), obj
    try:
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}}},
        )
        raise AssertionError("an unusable schema was accepted")
    except openai.BadRequestError as e:
        assert "no-such-format" in str(e), e


def check_forced_tool_calls(client: OpenAI, model: str) -> None:
    """tool_choice `required` always yields a valid call (stream and non-stream); a named
    function is the one called."""
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                          "parameters": WeatherArgs.model_json_schema()}},
        {"type": "function", "function": {"name": "get_time", "description": "Time",
                                          "parameters": TimeArgs.model_json_schema()}},
    ]
    for t in tools:
        t["function"]["parameters"]["additionalProperties"] = False
    schemas = {"get_weather": WeatherArgs, "get_time": TimeArgs}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls = 0
    for seed in range(30):
        done = client.chat.completions.create(
            model=model, messages=messages, tools=tools, tool_choice="required", seed=seed,
            max_tokens=300, parallel_tool_calls=False,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls", (seed, choice)
        assert len(choice.message.tool_calls) == 1, (seed, choice.message)
        for call in choice.message.tool_calls:
            schemas[call.function.name].model_validate_json(call.function.arguments)
            calls += 1
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=tools, tool_choice="required", seed=7,
        max_tokens=300, stream=True, parallel_tool_calls=False,
    )
    streamed, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            streamed.extend(c.delta.tool_calls or [])
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and streamed, (finish, streamed)
    for call in streamed:
        schemas[call.function.name].model_validate_json(call.function.arguments)
    named = client.chat.completions.create(
        model=model, messages=messages, tools=tools, seed=1, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "get_time", call
    TimeArgs.model_validate_json(call.function.arguments)
    print(f"tool_choice: {calls} forced calls valid, streamed {len(streamed)}, named {call.function.arguments}")


def check_auto_tools_and_choices(client: OpenAI, model: str) -> None:
    """tool_choice `auto` (the default): any call the model makes validates; `n` choices
    arrive with their indexes, whole and streamed."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": WeatherArgs.model_json_schema()}}]
    tools[0]["function"]["parameters"]["additionalProperties"] = False
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls = 0
    for seed in range(20):
        done = client.chat.completions.create(
            model=model, messages=messages, tools=tools, seed=seed, max_tokens=120
        )
        choice = done.choices[0]
        assert choice.finish_reason in ("stop", "length", "tool_calls"), (seed, choice)
        for call in choice.message.tool_calls or []:
            assert call.function.name == "get_weather", call
            WeatherArgs.model_validate_json(call.function.arguments)
            calls += 1
    many = client.chat.completions.create(
        model=model, messages=messages, n=3, seed=5, max_tokens=12, temperature=1.0
    )
    assert [c.index for c in many.choices] == [0, 1, 2], many
    assert all(isinstance(c.message.content, str) for c in many.choices), many
    texts = {}
    stream = client.chat.completions.create(
        model=model, messages=messages, n=2, seed=5, max_tokens=12, temperature=1.0, stream=True
    )
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert texts == {0: many.choices[0].message.content, 1: many.choices[1].message.content}, texts
    print(f"tool_choice auto: 20 replies, {calls} calls, all valid; n=3 choices, n=2 streamed alike")


def check_responses(client: OpenAI, model: str) -> None:
    """The Responses API (POST /v1/responses): text, items, forced calls, the client's own
    parsers, raw and helper streams, refusals. Raw bodies and events are validated strictly
    against the client's pydantic types."""
    if not hasattr(client, "responses"):
        print("responses: SKIPPED, this openai client predates the Responses API")
        return
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    # Text; the raw body validates strictly against the client's own model.
    raw = client.responses.with_raw_response.create(
        model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=8, temperature=0)
    strict = Response.model_validate_json(raw.text)
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_") and strict.id == r.id, r
    assert r.status in ("completed", "incomplete"), r
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens", r
    [msg] = [o for o in r.output if o.type == "message"]
    assert r.output_text == msg.content[0].text, r
    u = r.usage
    assert u.total_tokens == u.input_tokens + u.output_tokens and 1 <= u.output_tokens <= 8, u
    assert r.instructions == "Be brief." and r.max_output_tokens == 8, r
    print(f"responses: {r.status}, {u.input_tokens}+{u.output_tokens} tokens, {r.output_text!r}")

    # A forced call, its arguments valid; then the call and its result sent back as items.
    tools = [{"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
              "parameters": {**WeatherArgs.model_json_schema(), "additionalProperties": False}}]
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    for seed in range(10):
        raw = client.responses.with_raw_response.create(
            model=model, input=question, tools=tools, tool_choice="required", parallel_tool_calls=False,
            max_output_tokens=300, temperature=1.0, extra_body={"seed": seed})
        Response.model_validate_json(raw.text)
        called = raw.parse()
        assert called.status == "completed", called
        [call] = [o for o in called.output if o.type == "function_call"]
        assert call.name == "get_weather" and call.call_id.startswith("call_"), call
        WeatherArgs.model_validate_json(call.arguments)
    back = question + [o.to_dict() for o in called.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}]
    after = client.responses.create(model=model, input=back, tools=tools, max_output_tokens=6)
    assert after.status in ("completed", "incomplete") and after.usage.input_tokens > called.usage.input_tokens
    print(f"responses tools: 10 forced calls valid, e.g. {call.arguments}; round trip answered")

    # The client's own parsers: a pydantic text_format, and a pydantic function tool.
    for seed in range(10):
        parsed = client.responses.parse(model=model, input="Describe a place as JSON.", text_format=Place,
                                        max_output_tokens=300, extra_body={"seed": seed})
        assert parsed.status == "completed", parsed
        assert isinstance(parsed.output_parsed, Place), parsed
    fn = client.responses.parse(model=model, input=question, max_output_tokens=300, tool_choice="required",
                                parallel_tool_calls=False,
                                tools=[openai.pydantic_function_tool(WeatherArgs, name="get_weather")])
    [call] = [o for o in fn.output if o.type == "function_call"]
    assert isinstance(call.parsed_arguments, WeatherArgs), call
    print(f"responses.parse: 10 Place replies validated, e.g. {parsed.output_text!r}; {call.parsed_arguments!r}")

    # A raw event stream, in order, ending with the whole response.
    events = list(client.responses.create(model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=8,
                                          temperature=0, stream=True))
    for e in events:  # every event validates strictly against the client's own types
        TypeAdapter(ResponseStreamEvent).validate_python(e.to_dict())
    seqs = [e.sequence_number for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"], events[:2]
    end = events[-1]
    assert end.type in ("response.completed", "response.incomplete"), end
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == end.response.output_text == r.output_text, (text, r.output_text)
    # The stream helper: structured output and a forced call, each to get_final_response().
    with client.responses.stream(model=model, input="Describe a place as JSON.", text_format=Place,
                                 max_output_tokens=300, extra_body={"seed": 1}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and isinstance(final.output_parsed, Place), (kinds, final)
    with client.responses.stream(model=model, input=question, tools=tools, tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=300) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds, kinds
    [call] = [o for o in final.output if o.type == "function_call"]
    WeatherArgs.model_validate_json(call.arguments)
    print(f"responses stream: {len(events)} events; helper streams ended with {final.status} responses")

    # What needs stored state or hosted tools is refused by name.
    for kwargs, name in [({"previous_response_id": "resp_1"}, "previous_response_id"),
                         ({"store": True}, "store"),
                         ({"tools": [{"type": "web_search"}]}, "web_search")]:
        try:
            client.responses.create(model=model, input="Hi", max_output_tokens=2, **kwargs)
            raise AssertionError(f"{name} was accepted")
        except openai.BadRequestError as e:
            assert name in str(e), e
    print("responses errors: 400 for previous_response_id, store, web_search")


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base_url, api_key="not-needed-on-loopback", max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]
    assert models == [model, "smollm3"], models

    messages = [{"role": "user", "content": "Say hello."}]
    plain = client.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0, seed=1
    )
    choice = plain.choices[0]
    assert plain.object == "chat.completion", plain
    assert choice.message.role == "assistant", choice
    assert isinstance(choice.message.content, str), choice
    assert choice.finish_reason in ("stop", "length"), choice
    u = plain.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 10, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    print(f"plain: {choice.finish_reason}, usage {u.prompt_tokens}+{u.completion_tokens}")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=10,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, n = "", None, None, 0
    for chunk in stream:
        n += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == choice.message.content, (text, choice.message.content)
    assert finish == choice.finish_reason, finish
    assert usage is not None and usage.completion_tokens == u.completion_tokens, usage
    print(f"stream: {n} chunks, same text as the plain reply")

    thinking = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Think first."}]}],
        max_tokens=6,
        stop=["\n\n"],
        extra_body={"chat_template_kwargs": {"enable_thinking": True}, "top_k": 20, "min_p": 0.05},
    )
    assert thinking.usage.prompt_tokens != u.prompt_tokens
    extra = thinking.choices[0].message.model_extra or {}
    print(f"thinking: reasoning_content present: {'reasoning_content' in extra}")

    # A client's default model name is served by the one model on loopback.
    other = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=2)
    assert other.model == model, other.model

    # Logprobs, as the client parses them.
    lp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
    print(f"logprobs: {len(content)} tokens, e.g. {content[0].token!r} {content[0].logprob:.3f}")

    # Tools are accepted and the reply parses (a random model makes no call).
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    with_tools = client.chat.completions.create(model=model, messages=messages, max_tokens=4, tools=tools)
    assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls"), with_tools

    check_structured_output(client, model)
    check_forced_tool_calls(client, model)
    check_auto_tools_and_choices(client, model)
    check_responses(client, model)

    # Text completion with the client's legacy API.
    done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=3, temperature=0)
    assert isinstance(done.choices[0].text, str) and 1 <= done.usage.completion_tokens <= 3, done
    print(f"completions: {done.choices[0].text!r}")

    # Unknown fields are named, not ignored.
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=1,
                                       extra_body={"mirostat": 2})
        raise AssertionError("an unknown field was accepted")
    except openai.BadRequestError as e:
        assert "mirostat" in str(e), e

    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=1
        )
        raise AssertionError("an over-long prompt was accepted")
    except openai.BadRequestError as e:
        assert "context" in str(e), e
    print("errors: 400 unknown field, 400 prompt over the context")
    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
