package ssf

import (
	"net/http"
	"time"

	"github.com/tenure-dev/tenure/pkg/authn"
)

// pollRequest is an RFC 8936 §2.4 poll request.
type pollRequest struct {
	Ack               []string                `json:"ack,omitempty"`
	SetErrs           map[string]pollSetError `json:"setErrs,omitempty"`
	MaxEvents         *int                    `json:"maxEvents,omitempty"`
	ReturnImmediately bool                    `json:"returnImmediately,omitempty"`
}

type pollSetError struct {
	Err         string `json:"err"`
	Description string `json:"description"`
}

// pollResponse is RFC 8936 §2.5.
type pollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable,omitempty"`
}

// Poll limits.
const (
	defaultMaxEvents = 100
	maxMaxEvents     = 1000
)

// servePoll acknowledges what the receiver received (ack, setErrs) and returns the oldest
// unacknowledged SETs, waiting up to PollWait for one unless returnImmediately. A SET
// returned but not acknowledged is returned again by the next poll.
func (t *Transmitter) servePoll(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	ctx := r.Context()
	var req pollRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	max := defaultMaxEvents
	if req.MaxEvents != nil {
		max = *req.MaxEvents
		if max < 0 || max > maxMaxEvents {
			return badRequest("maxEvents must be between 0 and %d", maxMaxEvents)
		}
	}
	s, err := t.ownStream(ctx, t.pool, p, r.PathValue("stream_id"))
	if err != nil {
		return err
	}
	if s.Method != MethodPoll {
		return badRequest("stream %s uses push delivery, not poll", s.ID)
	}
	if len(req.Ack) > 0 {
		if _, err := t.pool.Exec(ctx, "UPDATE ssf.sets SET delivered_at = now(), token = '' WHERE stream_id = $1 AND jti = ANY($2) AND delivered_at IS NULL", s.ID, req.Ack); err != nil {
			return err
		}
	}
	for jti, e := range req.SetErrs {
		t.log.WarnContext(ctx, "receiver reported a SET error", "stream_id", s.ID, "jti", jti, "err", e.Err, "description", e.Description)
		if _, err := t.pool.Exec(ctx, "UPDATE ssf.sets SET failed = true, last_error = $3 WHERE stream_id = $1 AND jti = $2 AND delivered_at IS NULL",
			s.ID, jti, e.Err+": "+e.Description); err != nil {
			return err
		}
	}
	out := pollResponse{Sets: map[string]string{}}
	if max == 0 {
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	deadline := time.Now().Add(t.cfg.PollWait)
	for {
		woken := t.queued.wait()
		var n int
		if s.Status == "enabled" {
			rows, err := t.pool.Query(ctx, `SELECT jti, token FROM ssf.sets WHERE stream_id = $1 AND delivered_at IS NULL AND NOT failed
				ORDER BY seq LIMIT $2`, s.ID, max+1)
			if err != nil {
				return err
			}
			for rows.Next() {
				var jti, tok string
				if err := rows.Scan(&jti, &tok); err != nil {
					rows.Close()
					return err
				}
				if n++; n <= max {
					out.Sets[jti] = tok
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		out.MoreAvailable = n > max
		if n > 0 || req.ReturnImmediately || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-woken:
		case <-time.After(min(time.Until(deadline), time.Second)):
		}
		if s, err = t.ownStream(ctx, t.pool, p, s.ID); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
