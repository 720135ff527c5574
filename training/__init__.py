"""Offline training of recurrent text models; exports model folders the service loads."""
