package ssf

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// stream is a receiver's event stream as stored.
type stream struct {
	ID              string
	Owner           string
	Aud             []string
	Description     string
	EventsRequested []string // nil: all supported
	Method          string
	EndpointURL     string
	AuthHeader      string
	Status          string
	Reason          string
	LastVerify      *time.Time
}

// eventsDelivered is the intersection of what tenure supports and what the receiver asked for.
func (s *stream) eventsDelivered() []string {
	if s.EventsRequested == nil {
		return append([]string(nil), EventsSupported...)
	}
	var out []string
	for _, e := range EventsSupported {
		if contains(s.EventsRequested, e) {
			out = append(out, e)
		}
	}
	return out
}

const streamColumns = "stream_id, owner, aud, description, events_requested, method, endpoint_url, authorization_header, status, reason, last_verification_at"

func scanStream(row pgx.Row) (*stream, error) {
	var s stream
	err := row.Scan(&s.ID, &s.Owner, &s.Aud, &s.Description, &s.EventsRequested, &s.Method, &s.EndpointURL, &s.AuthHeader, &s.Status, &s.Reason, &s.LastVerify)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotFound
	}
	return &s, err
}

var errNotFound = errors.New("stream not found")

type querier interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
	QueryRow(context.Context, string, ...any) pgx.Row
}

// getStream returns owner's stream id (errNotFound for another owner's stream: a receiver
// cannot learn which ids exist).
func getStream(ctx context.Context, q querier, owner, id string) (*stream, error) {
	return scanStream(q.QueryRow(ctx, "SELECT "+streamColumns+" FROM ssf.streams WHERE stream_id = $1 AND owner = $2", id, owner))
}

func listStreams(ctx context.Context, q querier, owner string) ([]*stream, error) {
	rows, err := q.Query(ctx, "SELECT "+streamColumns+" FROM ssf.streams WHERE owner = $1 ORDER BY created_at, stream_id", owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*stream
	for rows.Next() {
		s, err := scanStream(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func insertStream(ctx context.Context, tx pgx.Tx, s *stream) error {
	_, err := tx.Exec(ctx, `INSERT INTO ssf.streams (stream_id, owner, aud, description, events_requested, method, endpoint_url, authorization_header, status, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		s.ID, s.Owner, s.Aud, s.Description, s.EventsRequested, s.Method, s.EndpointURL, s.AuthHeader, s.Status, s.Reason)
	return err
}

func updateStream(ctx context.Context, tx pgx.Tx, s *stream) error {
	_, err := tx.Exec(ctx, `UPDATE ssf.streams SET description = $2, events_requested = $3, method = $4, endpoint_url = $5,
		authorization_header = $6, status = $7, reason = $8, updated_at = now() WHERE stream_id = $1`,
		s.ID, s.Description, s.EventsRequested, s.Method, s.EndpointURL, s.AuthHeader, s.Status, s.Reason)
	return err
}

// queueSET stores a signed SET for a stream, due at once; false when it was already stored
// (same jti).
func queueSET(ctx context.Context, tx pgx.Tx, streamID, jti, eventType, token string) (bool, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO ssf.sets (stream_id, jti, event_type, token) VALUES ($1, $2, $3, $4)
		ON CONFLICT (stream_id, jti) DO NOTHING`, streamID, jti, eventType, token)
	return tag.RowsAffected() == 1, err
}
