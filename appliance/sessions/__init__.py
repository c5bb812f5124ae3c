"""Live sessions, whichever transport carries them: what a session does (`SessionSpec`: transcribe, echo,
interpret), how it is opened on the shared models (`open_conversation`), its responders (`EchoBot`,
`Interpreter`), what a client sees (`event_json`, `StateTracker`) and the relay to a transport that plays
speech itself (`EventRelay`). Transports import this package; it imports no transport."""

from appliance.sessions.echo import EchoBot
from appliance.sessions.interpreter import Interpreter
from appliance.sessions.relay import EventRelay
from appliance.sessions.session import open_conversation
from appliance.sessions.spec import SPEECH_TO_ENGLISH, Mode, SessionSpec, offered_pairs
from appliance.sessions.state import State, StateTracker
from appliance.sessions.wire import event_json

__all__ = ["SPEECH_TO_ENGLISH", "EchoBot", "EventRelay", "Interpreter", "Mode", "SessionSpec", "State",
           "StateTracker", "event_json", "offered_pairs", "open_conversation"]
