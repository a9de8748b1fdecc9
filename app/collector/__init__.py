"""The collector: JSON over HTTP in, Avro batch messages on events.raw out."""
