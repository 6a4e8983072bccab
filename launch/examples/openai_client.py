"""The OpenAI Python client against a SWAA server's OpenAI-compatible API.

Start a server first (launch/examples/serve.sh), then:

    python launch/examples/openai_client.py --url http://127.0.0.1:30000

Any OpenAI client works; the server ignores the API key. curl equivalents: launch/examples/curl.sh.
"""

from __future__ import annotations

import argparse

import openai


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:30000", help="the server (default %(default)s)")
    p.add_argument("--model", default="default", help="model name sent in requests (default %(default)s)")
    args = p.parse_args()

    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="EMPTY")
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]

    # 1. chat completion
    response = client.chat.completions.create(model=args.model, messages=messages, max_tokens=64, temperature=0)
    print(f"[chat] {response.choices[0].message.content}")
    print(f"[chat] usage: {response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} completion tokens")

    # 2. streaming chat completion: print tokens as they arrive
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Count from 1 to 5, separated by commas."}],
        max_tokens=64, temperature=0, stream=True,
    )
    print("[stream] ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # 3. (legacy) completion of raw text, no chat template
    completion = client.completions.create(model=args.model, prompt="The capital of France is", max_tokens=16, temperature=0)
    print(f"[completion] The capital of France is{completion.choices[0].text}")


if __name__ == "__main__":
    main()
