"""SDP (RFC 4566) for audio calls and the offer/answer model (RFC 3264): PCMU, PCMA, G.722, telephone-event,
ptime and direction. One audio stream; other media in an offer are declined with port 0, as §6 says."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from appliance.sip.uri import SipSyntaxError

# static payload types (RFC 3551) and the clock rates SDP states for them (G.722 says 8000 for history's sake)
CODECS = {"PCMU": (0, 8000), "PCMA": (8, 8000), "G722": (9, 8000)}
DIRECTIONS = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class SdpError(SipSyntaxError):
    """An SDP body we cannot parse or answer (488 Not Acceptable Here)."""


@dataclass
class Media:
    kind: str
    port: int
    proto: str
    formats: list[str]
    rtpmap: dict[str, str] = field(default_factory=dict)  # payload type -> "PCMU/8000"
    fmtp: dict[str, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    ptime: int | None = None
    connection: str | None = None


@dataclass
class Session:
    origin_address: str
    connection: str | None
    media: list[Media]
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    version: int = 0

    def audio(self) -> Media | None:
        return next((m for m in self.media if m.kind == "audio" and m.port), None)

    def address_of(self, media: Media) -> str:
        address = media.connection or self.connection
        if not address:
            raise SdpError("no connection address (c=) for the audio stream")
        return address


def parse_sdp(body: bytes) -> Session:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    origin, connection, media = "", None, []
    current: Media | None = None
    session_direction = "sendrecv"
    for line in lines:
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1:
            raise SdpError(f"bad SDP line {line[:60]!r}")
        if kind == "o":
            parts = value.split()
            if len(parts) != 6:
                raise SdpError("bad o= line")
            origin = parts[5]
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(f"bad c= line {value[:60]!r}")
            if current is None:
                connection = parts[2].split("/")[0]
            else:
                current.connection = parts[2].split("/")[0]
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(f"bad m= line {value[:60]!r}")
            current = Media(parts[0], int(parts[1].split("/")[0]), parts[2], parts[3:], direction=session_direction)
            media.append(current)
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if current is None:
                    session_direction = name
                else:
                    current.direction = name
            elif current is not None and name in ("rtpmap", "fmtp"):
                pt, _, spec = arg.partition(" ")
                (current.rtpmap if name == "rtpmap" else current.fmtp)[pt] = spec.strip()
            elif current is not None and name == "ptime" and arg.strip().isdigit():
                current.ptime = int(arg)
    if not media:
        raise SdpError("SDP has no media (m=) line")
    return Session(origin, connection, media)


def codec_name(media: Media, pt: str) -> str | None:
    """The encoding name of a payload type: from rtpmap, else the static table."""
    if pt in media.rtpmap:
        return media.rtpmap[pt].split("/")[0].upper()
    return next((name for name, (number, _) in CODECS.items() if str(number) == pt), None)


@dataclass(frozen=True)
class Negotiated:
    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    ptime: int
    remote: tuple[str, int]
    direction: str  # ours


def answer(offer: Session, local_address: str, local_port: int, preferred: tuple[str, ...] = ("G722", "PCMU", "PCMA"),
           ) -> tuple[Session, Negotiated]:
    """Our answer to an offer, and what was agreed. Raises SdpError when no codec is common (→ 488)."""
    audio = offer.audio()
    if audio is None:
        raise SdpError("the offer has no audio stream")
    if audio.proto not in ("RTP/AVP", "RTP/AVPF"):
        raise SdpError(f"unsupported media protocol {audio.proto} (RTP/AVP only; no SRTP yet)")
    offered = {codec_name(audio, pt): pt for pt in audio.formats}
    codec = next((c for c in preferred if c in offered), None)
    if codec is None:
        raise SdpError("no common codec: offered " + ", ".join(n or "?" for n in offered) + "; we take "
                       + ", ".join(preferred))
    pt = offered[codec]
    dtmf = next((p for p in audio.formats if codec_name(audio, p) == "TELEPHONE-EVENT"
                 and audio.rtpmap[p].endswith("/8000")), None)
    ptime = audio.ptime or 20
    direction = DIRECTIONS.get(audio.direction, "sendrecv")
    media = []
    for m in offer.media:
        if m is audio:
            rtpmap = {pt: f"{codec}/{CODECS[codec][1]}"}
            formats = [pt]
            if dtmf is not None:
                rtpmap[dtmf], formats = "telephone-event/8000", [pt, dtmf]
            media.append(Media("audio", local_port, audio.proto, formats, rtpmap,
                               {dtmf: "0-16"} if dtmf is not None else {}, direction, ptime))
        else:
            media.append(Media(m.kind, 0, m.proto, m.formats[:1]))
    session = Session(local_address, local_address, media)
    remote = (offer.address_of(audio), audio.port)
    return session, Negotiated(codec, int(pt), int(dtmf) if dtmf is not None else None, ptime, remote, direction)


def accept(our_offer: Session, their_answer: Session) -> Negotiated:
    """What was agreed when ``their_answer`` came back for ``our_offer`` (RFC 3264 §5): the first codec of the
    answer that we offered. Raises SdpError when the answer is unusable (the call is then hung up)."""
    audio, offered = their_answer.audio(), our_offer.audio()
    if audio is None or offered is None:
        raise SdpError("the answer declined the audio stream")
    ours = {codec_name(offered, pt) for pt in offered.formats}
    codec_pt = next((pt for pt in audio.formats if codec_name(audio, pt) in ours and pt in offered.formats
                     and codec_name(audio, pt) in CODECS), None)
    if codec_pt is None:
        raise SdpError("the answer holds none of the codecs offered")
    dtmf = next((p for p in audio.formats if codec_name(audio, p) == "TELEPHONE-EVENT"), None)
    return Negotiated(codec_name(audio, codec_pt) or "", int(codec_pt), int(dtmf) if dtmf is not None else None,
                      audio.ptime or offered.ptime or 20, (their_answer.address_of(audio), audio.port),
                      DIRECTIONS.get(audio.direction, "sendrecv"))


def offer(local_address: str, local_port: int, codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA"),
          direction: str = "sendrecv", ptime: int = 20) -> Session:
    formats = [str(CODECS[c][0]) for c in codecs] + ["101"]
    rtpmap = {str(CODECS[c][0]): f"{c}/{CODECS[c][1]}" for c in codecs} | {"101": "telephone-event/8000"}
    return Session(local_address, local_address,
                   [Media("audio", local_port, "RTP/AVP", formats, rtpmap, {"101": "0-16"}, direction, ptime)])


def render(session: Session) -> bytes:
    family = "IP6" if ":" in session.origin_address else "IP4"
    lines = ["v=0", f"o=appliance {session.session_id} {session.version} IN {family} {session.origin_address}",
             "s=appliance", f"c=IN {family} {session.connection or session.origin_address}", "t=0 0"]
    for m in session.media:
        lines.append(f"m={m.kind} {m.port} {m.proto} {' '.join(m.formats)}")
        if not m.port:
            continue
        lines += [f"a=rtpmap:{pt} {spec}" for pt, spec in m.rtpmap.items()]
        lines += [f"a=fmtp:{pt} {spec}" for pt, spec in m.fmtp.items()]
        if m.ptime:
            lines.append(f"a=ptime:{m.ptime}")
        lines.append(f"a={m.direction}")
    return ("\r\n".join(lines) + "\r\n").encode()
