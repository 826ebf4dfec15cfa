"""What every page embeds: its data as JSON inside a <script> block, safe whatever it holds."""

from __future__ import annotations

import json

from tests.helpers import chat_rows, jsonl


def test_embedded_page_data_holds_no_raw_angle_brackets_or_ampersands(make_account):
    member = make_account(team="acme", role="member")
    name = "a<b>&c <!--<script></script>"
    member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))}, data={"name": name})
    html = member.client.get("/datasets").text
    data = html.split('id="page-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data)["datasets"][0]["name"] == name, "the browser reads the same string back"
