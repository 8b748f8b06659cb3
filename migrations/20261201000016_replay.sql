-- Replay: committed messages re-queued in order. A copy at the tail of the queue names the
-- message it replays (`replay_of`); at the head, the originals themselves return to their
-- positions (see store/messages/replay.rs).
ALTER TABLE messages ADD COLUMN replay_of uuid;
