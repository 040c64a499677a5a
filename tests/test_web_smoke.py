from aiohttp.test_utils import TestClient

from .conftest import MakeClient, receive_until, ws_path
from .web_helpers import create_student, create_tutor, register_admin, start_session


async def test_all_role_end_to_end(make_client: MakeClient) -> None:
    client: TestClient = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session))
    await receive_until(ws, "response_done")
    await ws.send_json({"type": "text", "content": "hello"})
    await receive_until(ws, "response_done")
    await ws.close()
