-- Replay: committed messages re-queued in order. A copy at the tail of the queue names the
-- message it replays (`replay_of`); at the head, the originals themselves return to their
-- positions (see store/messages/replay.rs).
ALTER TABLE messages ADD COLUMN replay_of uuid;

-- As before (baseline section 8), delivered counting only messages that became committed:
-- a replay at the head returns committed messages to the queue, which is not an undelivery.
CREATE OR REPLACE FUNCTION hookline_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_counts (webhook_id, live, dead, committed, delivered)
    SELECT webhook_id, sum(live), sum(dead), sum(committed), greatest(sum(committed), 0)
    FROM (SELECT webhook_id, (state = 'queued')::int AS live, (state = 'dead')::int AS dead,
                 (state = 'committed')::int AS committed FROM new_rows
          UNION ALL
          SELECT webhook_id, -(state = 'queued')::int, -(state = 'dead')::int, -(state = 'committed')::int
          FROM old_rows) d
    GROUP BY webhook_id
    HAVING sum(live) <> 0 OR sum(dead) <> 0 OR sum(committed) <> 0;
    RETURN NULL;
END
$$;
