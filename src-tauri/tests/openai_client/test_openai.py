"""Checks the server with the official `openai` Python client.

Usage: python3 test_openai.py BASE_URL MODEL_ID
(BASE_URL like http://127.0.0.1:3000/v1). Exits non-zero on the first failure.
"""

import sys

import openai
from openai import OpenAI


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base_url, api_key="not-needed-on-loopback", max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]
    assert models == [model], models

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

    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404

    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=1
        )
        raise AssertionError("an over-long prompt was accepted")
    except openai.BadRequestError as e:
        assert "context" in str(e), e
    print("errors: 404 unknown model, 400 prompt over the context")
    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
