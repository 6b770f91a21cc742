"""The encrypted UDP transport: wire codec, Noise sessions, streams, congestion control."""
