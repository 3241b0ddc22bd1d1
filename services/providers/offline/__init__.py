"""Offline providers: real speech, transcription and image work on this machine, no key."""
