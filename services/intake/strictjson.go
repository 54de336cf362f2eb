package intake

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// checkJSONText rejects, before any decoding, what encoding/json lets through silently:
// an object with the same key twice (the last one wins, so `"type"` twice can turn a hire
// into a leaver), invalid UTF-8 and lone UTF-16 surrogates in strings (replaced with U+FFFD,
// so two different names could compare equal). The errors are 400s naming the key path.
func checkJSONText(body []byte) error {
	if jsontext.Value(body).IsValid() {
		return nil
	}
	dec := jsontext.NewDecoder(bytes.NewReader(body))
	for {
		_, err := dec.ReadToken()
		if errors.Is(err, io.EOF) {
			// Valid tokens but more than one value, or empty: the decoder reports those.
			return nil
		}
		if err == nil {
			continue
		}
		var se *jsontext.SyntacticError
		if !errors.As(err, &se) {
			return nil
		}
		path := pointerPath(se.JSONPointer)
		switch {
		case errors.Is(se.Err, jsontext.ErrDuplicateName):
			return BadRequest(path, "duplicate key %q (offset %d): each key may appear once in an object", path, se.ByteOffset)
		// jsontext has no exported errors for these two; its messages are stable words.
		case strings.Contains(se.Err.Error(), "invalid UTF-8"):
			return BadRequest(path, "%s is not valid UTF-8 (offset %d)", orBody(path), se.ByteOffset)
		case strings.Contains(se.Err.Error(), "surrogate"):
			return BadRequest(path, "%s holds a lone UTF-16 surrogate escape (offset %d), which is not a character", orBody(path), se.ByteOffset)
		}
		// Plain syntax errors are left to the decoder, whose messages the docs describe.
		return nil
	}
}

func orBody(path string) string {
	if path == "" {
		return "the body"
	}
	return path
}

// pointerPath turns a JSON Pointer (RFC 6901) into the dotted path the intake's errors use:
// /worker/worker_id → worker.worker_id, /employees/2/fields → employees[2].fields.
func pointerPath(p jsontext.Pointer) string {
	var b strings.Builder
	for tok := range p.Tokens() {
		if _, err := strconv.Atoi(tok); err == nil && b.Len() > 0 {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}
