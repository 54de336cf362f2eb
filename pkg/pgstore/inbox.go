package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Claim records that consumer handles msgID in tx. It reports false when the message was
// handled before: the caller then skips its work and acks. Because the row is written in the
// handler's own transaction, a crash before commit leaves no trace and the redelivery runs
// the work again; a crash after commit makes the redelivery a no-op.
func Claim(ctx context.Context, tx pgx.Tx, consumer, msgID, subject string) (bool, error) {
	tag, err := tx.Exec(ctx, "INSERT INTO inbox (consumer, msg_id, subject) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", consumer, msgID, subject)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// InboxKey names one message for one consumer.
type InboxKey struct{ Consumer, MsgID, Subject string }

// ClaimAll is Claim for several messages in one statement (a group commit). first[i] is
// true when keys[i] is claimed now; a key handled before, or repeated earlier in keys, is
// false.
func ClaimAll(ctx context.Context, tx pgx.Tx, keys []InboxKey) (first []bool, err error) {
	consumers, ids, subjects := make([]string, len(keys)), make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		consumers[i], ids[i], subjects[i] = k.Consumer, k.MsgID, k.Subject
	}
	rows, err := tx.Query(ctx, `INSERT INTO inbox (consumer, msg_id, subject)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING RETURNING consumer, msg_id`, consumers, ids, subjects)
	if err != nil {
		return nil, err
	}
	claimed := map[[2]string]bool{}
	var c, id string
	if _, err := pgx.ForEachRow(rows, []any{&c, &id}, func() error {
		claimed[[2]string{c, id}] = true
		return nil
	}); err != nil {
		return nil, err
	}
	first = make([]bool, len(keys))
	for i, k := range keys {
		key := [2]string{k.Consumer, k.MsgID}
		first[i] = claimed[key]
		delete(claimed, key) // a repeat later in keys is not first
	}
	return first, nil
}
