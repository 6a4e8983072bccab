"""SGLang frontend-language programs against a running SWAA server.

Start a server first (launch/examples/serve.sh), then:

    python launch/examples/frontend_program.py --url http://127.0.0.1:30000

The programs run unchanged on any SGLang server: SWAA lives in the server.
"""

from __future__ import annotations

import argparse

import sglang as sgl
from sglang.lang.chat_template import get_chat_template


@sgl.function
def capital(s, country):
    s += f"Q: What is the capital of {country}?\nA: The capital of {country} is"
    s += sgl.gen("answer", max_tokens=16, stop="\n")


@sgl.function
def sentiment(s, review):
    s += f"Review: {review}\nSentiment (positive or negative):"
    s += sgl.select("label", choices=[" positive", " negative"])


@sgl.function
def chat(s, question, follow_up):
    s += sgl.system("You are a helpful assistant. Answer briefly.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("first", max_tokens=48))
    s += sgl.user(follow_up)
    s += sgl.assistant(sgl.gen("second", max_tokens=48))


def check(state):
    """Errors inside a program are recorded on its state, not raised: raise them here."""
    if state.error() is not None:
        raise state.error()
    return state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:30000", help="the server (default %(default)s)")
    p.add_argument("--chat-template", default="auto",
                   help="SGLang chat template name for sgl.user/sgl.assistant (default: guessed from the "
                        "server's model path; ChatML where SGLang does not know the model, e.g. SmolLM2)")
    args = p.parse_args()

    backend = sgl.RuntimeEndpoint(args.url, chat_template_name=None if args.chat_template == "auto" else args.chat_template)
    if args.chat_template == "auto" and backend.chat_template.name == "default":
        backend.chat_template = get_chat_template("chatml")  # SmolLM2 and Qwen speak ChatML
    sgl.set_default_backend(backend)
    print(f"server model: {backend.get_model_name()}")

    state = check(capital.run(country="France", temperature=0))
    print(f"[gen] capital of France:{state['answer']}")

    state = check(sentiment.run(review="The food was cold and the waiter was rude."))
    print(f"[select] sentiment: {state['label'].strip()}")

    state = check(chat.run(question="Name a primary color.", follow_up="Name another one.", temperature=0))
    for message in state.messages():
        print(f"[chat] {message['role']}: {message['content'].strip()}")

    countries = ["Japan", "Italy", "Brazil"]
    states = capital.run_batch([{"country": c} for c in countries], temperature=0)
    for country, state in zip(countries, states):
        print(f"[batch] capital of {country}:{check(state)['answer']}")


if __name__ == "__main__":
    main()
