"""The example Python function: describes each reading."""


def handler(event, context):
    n = event["id"]
    return {
        "id": n,
        "parity": "even" if n % 2 == 0 else "odd",
        "square": n * n,
        "from": context["messageTopic"],
        "invoke": context["invokeid"],
    }
