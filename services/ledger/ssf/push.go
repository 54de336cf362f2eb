package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// pending is one SET claimed for push delivery.
type pending struct {
	streamID, jti, token, url, auth string
	attempts                        int
}

// pushLease is how long a claimed SET is hidden from other pushers (replicas) while one
// delivers it: longer than a push may take.
func (t *Transmitter) pushLease() time.Duration { return 3 * t.cfg.PushTimeout }

// pushNow pushes one claimed SET in the background, bounded by PushWorkers; the push loop
// retries it if this fails.
func (t *Transmitter) pushNow(p pending) {
	ctx := t.pushCtx()
	if ctx == nil {
		return
	}
	t.inflight.Add(1)
	go func() {
		defer t.inflight.Done()
		select {
		case t.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-t.slots }()
		t.pushOne(ctx, p)
	}()
}

// pushLoop delivers due SETs to push streams until ctx ends: at once when SETs are queued,
// and at least every second for retries that come due.
func (t *Transmitter) pushLoop(ctx context.Context) {
	for {
		woken := t.queued.wait()
		n, err := t.pushDue(ctx)
		if err != nil && ctx.Err() == nil {
			t.log.WarnContext(ctx, "push SETs", "err", err)
		}
		if n > 0 {
			continue // maybe more are due
		}
		select {
		case <-ctx.Done():
			return
		case <-woken:
		case <-time.After(time.Second):
		}
	}
}

// pushDue claims up to a batch of due SETs on enabled push streams and delivers them, in
// parallel, and returns how many it claimed. Claiming moves next_attempt_at past the lease
// with SKIP LOCKED, so replicas never push the same SET at once.
func (t *Transmitter) pushDue(ctx context.Context) (int, error) {
	rows, err := t.pool.Query(ctx, `UPDATE ssf.sets x SET next_attempt_at = now() + $1::interval
		FROM (SELECT s.stream_id, s.jti FROM ssf.sets s JOIN ssf.streams st USING (stream_id)
		      WHERE s.delivered_at IS NULL AND NOT s.failed AND s.next_attempt_at <= now()
		        AND st.status = 'enabled' AND st.method = $2
		      ORDER BY s.seq LIMIT 100 FOR UPDATE OF s SKIP LOCKED) due, ssf.streams st
		WHERE x.stream_id = due.stream_id AND x.jti = due.jti AND st.stream_id = x.stream_id
		RETURNING x.stream_id, x.jti, x.token, x.attempts, st.endpoint_url, st.authorization_header`,
		fmt.Sprintf("%d milliseconds", t.pushLease().Milliseconds()), MethodPush)
	if err != nil {
		return 0, err
	}
	var batch []pending
	for rows.Next() {
		var p pending
		if err := rows.Scan(&p.streamID, &p.jti, &p.token, &p.attempts, &p.url, &p.auth); err != nil {
			rows.Close()
			return 0, err
		}
		batch = append(batch, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	for _, p := range batch {
		select {
		case t.slots <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return len(batch), nil // the leases expire and the SETs come due again
		}
		wg.Go(func() {
			defer func() { <-t.slots }()
			t.pushOne(ctx, p)
		})
	}
	wg.Wait()
	return len(batch), nil
}

// errRejected is a receiver's 400: the SET itself is wrong for it, so retrying cannot help.
var errRejected = errors.New("rejected by the receiver")

// pushOne delivers one SET and records the outcome: delivered, failed for good (400), or
// due again after a back-off.
func (t *Transmitter) pushOne(ctx context.Context, p pending) {
	err := t.post(ctx, p)
	bg := context.WithoutCancel(ctx)
	switch {
	case err == nil:
		_, err = t.pool.Exec(bg, "UPDATE ssf.sets SET delivered_at = now(), token = '', attempts = attempts + 1, last_error = '' WHERE stream_id = $1 AND jti = $2", p.streamID, p.jti)
	case errors.Is(err, errRejected):
		t.log.WarnContext(ctx, "receiver rejected a SET; not retrying", "stream_id", p.streamID, "jti", p.jti, "err", err)
		_, err = t.pool.Exec(bg, "UPDATE ssf.sets SET failed = true, attempts = attempts + 1, last_error = $3 WHERE stream_id = $1 AND jti = $2", p.streamID, p.jti, err.Error())
	default:
		delay := t.backoff(p.attempts + 1)
		t.log.InfoContext(ctx, "push failed; retrying", "stream_id", p.streamID, "jti", p.jti, "attempt", p.attempts+1, "in", delay, "err", err)
		_, err = t.pool.Exec(bg, "UPDATE ssf.sets SET attempts = attempts + 1, last_error = $3, next_attempt_at = now() + $4::interval WHERE stream_id = $1 AND jti = $2",
			p.streamID, p.jti, err.Error(), fmt.Sprintf("%d milliseconds", delay.Milliseconds()))
	}
	if err != nil && ctx.Err() == nil {
		t.log.ErrorContext(ctx, "record push outcome", "stream_id", p.streamID, "jti", p.jti, "err", err)
	}
}

// backoff is the delay before attempt n+1: PushBackoff doubled per attempt, capped, with
// up to 20% jitter so a recovered receiver is not hit by every stream at once.
func (t *Transmitter) backoff(attempts int) time.Duration {
	d := t.cfg.PushBackoff
	for i := 1; i < attempts && d < t.cfg.PushMaxBackoff; i++ {
		d *= 2
	}
	d = min(d, t.cfg.PushMaxBackoff)
	return d + time.Duration(rand.Int64N(int64(d)/5+1))
}

// post is one RFC 8935 push: the SET as application/secevent+jwt; 202 (any 2xx) is success,
// 400 a rejection with an error code, anything else worth a retry.
func (t *Transmitter) post(ctx context.Context, p pending) error {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.PushTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, strings.NewReader(p.token))
	if err != nil {
		return fmt.Errorf("%w: endpoint: %v", errRejected, err)
	}
	req.Header.Set("Content-Type", "application/secevent+jwt")
	req.Header.Set("Accept", "application/json")
	if p.auth != "" {
		req.Header.Set("Authorization", p.auth)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusBadRequest:
		var e struct {
			Err         string `json:"err"`
			Description string `json:"description"`
		}
		_ = json.Unmarshal(body, &e)
		return fmt.Errorf("%w: %s %s", errRejected, e.Err, e.Description)
	default:
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
}
