-- The last position given out, kept apart from the events: retention may
-- remove the stream that holds the newest event, and a position must never
-- be given out twice (followers read "after position p").
CREATE TABLE log_head (
    one      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    position BIGINT  NOT NULL
);

INSERT INTO log_head (one, position) SELECT TRUE, COALESCE(MAX(position), 0) FROM events;
