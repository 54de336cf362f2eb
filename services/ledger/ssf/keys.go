package ssf

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"

	"github.com/go-jose/go-jose/v4"

	"github.com/tenure-dev/tenure/pkg/keyfile"
)

// LoadOrCreateKey reads the transmitter's RSA signing key (PEM, PKCS #8 "PRIVATE KEY") from
// path, or creates a 2048-bit key there (mode 0600) when the file does not exist. RS256 is
// what SSF receivers are sure to accept.
func LoadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	k, err := keyfile.LoadOrCreate(path, func() (crypto.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA key (SETs are signed RS256)", path)
	}
	if rk.N.BitLen() < 2048 {
		return nil, fmt.Errorf("%s: RSA key of %d bits; at least 2048 are needed", path, rk.N.BitLen())
	}
	return rk, nil
}

// keyID is the RFC 7638 thumbprint of the public key, base64url: stable across restarts and
// replicas that share the key file.
func keyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64URL(tp), nil
}
