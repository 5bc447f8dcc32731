-- Each outbox message's W3C traceparent (src/trace.rs), published as its `traceparent` header so
-- that one trace follows a command through events and providers. NULL in rows written before
-- this migration; an element is NULL for a message without one.
ALTER TABLE outbox ADD COLUMN traceparents TEXT[];
ALTER TABLE outbox ALTER COLUMN traceparents SET COMPRESSION lz4;
ALTER TABLE outbox ADD CONSTRAINT outbox_one_traceparent_per_message CHECK (
    traceparents IS NULL OR cardinality(traceparents) = cardinality(subjects));
