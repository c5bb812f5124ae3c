"""SIP (RFC 3261): messages, transactions, dialogs, the user agent; SDP offer/answer and RTP media."""
