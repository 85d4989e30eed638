-- Event data is JSON text, or a zstd frame made with one of these
-- dictionaries (ADR 18). `id` is zstd's own dictionary id, which every frame
-- names in its header; `position` is how long the log was when it was
-- trained. Read a frame with the stock tool:
--   sqlite3 events.db "SELECT writefile('dict', data) FROM dictionaries WHERE id = …"
--   zstd -d -D dict frame.zst
-- or print whole streams with `sagaflow events`.
CREATE TABLE dictionaries (
    id       INTEGER PRIMARY KEY,
    position INTEGER NOT NULL,
    data     BLOB    NOT NULL
);
