"""SDP offer/answer (RFC 3264): codec choice, DTMF, ptime, hold directions, declined streams, bad bodies."""

from __future__ import annotations

import pytest

from appliance.sip.sdp import SdpError, answer, offer, parse_sdp, render

BARESIP_LIKE = (b"v=0\r\no=- 123 456 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
                b"m=audio 4000 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
                b"a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
                b"m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")


def test_answer_prefers_g722_keeps_dtmf_and_declines_video() -> None:
    session, agreed = answer(parse_sdp(BARESIP_LIKE), "192.0.2.1", 30000)
    assert (agreed.codec, agreed.payload_type, agreed.dtmf_payload_type) == ("G722", 9, 101)
    assert agreed.remote == ("192.0.2.10", 4000) and agreed.ptime == 20 and agreed.direction == "sendrecv"
    again = parse_sdp(render(session))
    assert [(m.kind, m.port) for m in again.media] == [("audio", 30000), ("video", 0)]  # same order, video off
    assert again.media[0].formats == ["9", "101"] and again.connection == "192.0.2.1"


def test_static_payload_types_without_rtpmap_and_media_level_connection() -> None:
    sdp = (b"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\n"
           b"a=ptime:30\r\n")
    _, agreed = answer(parse_sdp(sdp), "::1", 30002, preferred=("PCMA", "PCMU"))
    assert (agreed.codec, agreed.payload_type, agreed.dtmf_payload_type) == ("PCMU", 0, None)
    assert agreed.remote == ("2001:db8::5", 5004) and agreed.ptime == 30


@pytest.mark.parametrize(("theirs", "ours"), [("sendonly", "recvonly"), ("recvonly", "sendonly"),
                                              ("inactive", "inactive")])
def test_hold_directions(theirs: str, ours: str) -> None:
    sdp = BARESIP_LIKE.replace(b"a=sendrecv", f"a={theirs}".encode())
    session, agreed = answer(parse_sdp(sdp), "192.0.2.1", 30000)
    assert agreed.direction == ours and parse_sdp(render(session)).media[0].direction == ours


def test_session_level_direction_applies_to_media() -> None:
    sdp = BARESIP_LIKE.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n").replace(b"a=sendrecv\r\n", b"")
    assert answer(parse_sdp(sdp), "192.0.2.1", 30000)[1].direction == "recvonly"


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "v=0"), (b"hello", "v=0"), (b"v=0\r\no=- 1 1 IN IP4 h\r\n", "no media"),
    (b"v=0\r\nm=audio x RTP/AVP 0\r\n", "bad m= line"),
    (b"v=0\r\nc=IN XX 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n", "bad c="),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_sdp(body)


def test_unanswerable_offers() -> None:
    with pytest.raises(SdpError, match="no common codec: offered OPUS"):
        answer(parse_sdp(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"),
               "h", 1)
    with pytest.raises(SdpError, match="SRTP"):
        answer(parse_sdp(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/SAVP 0\r\n"), "h", 1)
    with pytest.raises(SdpError, match="no connection address"):
        answer(parse_sdp(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n"), "h", 1)


def test_our_offer_round_trips() -> None:
    ours = parse_sdp(render(offer("192.0.2.1", 31000)))
    audio = ours.audio()
    assert audio is not None and audio.formats == ["9", "0", "8", "101"] and audio.rtpmap["101"].startswith("tel")
    _, agreed = answer(ours, "192.0.2.2", 32000, preferred=("PCMA",))
    assert agreed.codec == "PCMA" and agreed.dtmf_payload_type == 101
