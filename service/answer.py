"""What a handler answers: status, body bytes, media type and headers.

The hot routes send it as two raw ASGI messages (``send_answer``); FastAPI's routes and exception
handlers wrap it in a Starlette Response (``to_response``). One value, so an answer and its error
bodies are built once whichever surface sends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import Response

JSON = "application/json"


@dataclass(slots=True)
class Answer:
    body: bytes
    status: int = 200
    media_type: str | None = JSON
    headers: dict[str, str] | None = None

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        raw = [(b"content-length", str(len(self.body)).encode())]
        if self.media_type is not None:
            raw.append((b"content-type", self.media_type.encode()))
        if self.headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        return raw


async def send_answer(send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.raw_headers()})
    await send({"type": "http.response.body", "body": answer.body})


def to_response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)
