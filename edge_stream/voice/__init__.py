"""Speech logic on top of runtime streams, no sockets: VAD events, the speech gate,
CTC decoding, the command grammar and the streaming command parser."""
