// Package auth verifies client passwords the way PostgreSQL does:
// SCRAM-SHA-256 (RFC 7677, no channel binding) and md5.
//
// The proxy holds plaintext passwords from its config (it needs them to
// log in to the backends too), so SCRAM verifiers are derived once per
// user at start and reused for every login.
package auth

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/xdg-go/scram"
)

// SCRAMIterations matches PostgreSQL's default scram_iterations.
const SCRAMIterations = 4096

// Mechanism is the SASL mechanism the proxy advertises. SCRAM-SHA-256-PLUS
// (channel binding) is not offered, so libpq's channel_binding=prefer
// falls back to plain SCRAM-SHA-256, as against a server without TLS.
const Mechanism = "SCRAM-SHA-256"

// Verifiers caches SCRAM stored credentials per user.
type Verifiers struct {
	mu    sync.Mutex
	creds map[string]scram.StoredCredentials
	// decoy is a random password used for logins of unknown users; one per
	// process so failed logins cannot grow the cache.
	decoy string
}

// NewVerifiers returns an empty cache.
func NewVerifiers() *Verifiers {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &Verifiers{creds: map[string]scram.StoredCredentials{}, decoy: hex.EncodeToString(b)}
}

// credentials returns the stored credentials for user with password,
// deriving them (PBKDF2, a few ms) only the first time.
func (v *Verifiers) credentials(user, password string) (scram.StoredCredentials, error) {
	key := user + "\x00" + password
	v.mu.Lock()
	c, ok := v.creds[key]
	v.mu.Unlock()
	if ok {
		return c, nil
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return c, fmt.Errorf("scram salt: %w", err)
	}
	client, err := scram.SHA256.NewClient(user, password, "")
	if err != nil {
		return c, fmt.Errorf("scram credentials for %q: %w", user, err)
	}
	c, err = client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: SCRAMIterations})
	if err != nil {
		return c, fmt.Errorf("scram credentials for %q: %w", user, err)
	}
	v.mu.Lock()
	v.creds[key] = c
	v.mu.Unlock()
	return c, nil
}

// SCRAM is one server-side SCRAM-SHA-256 exchange.
type SCRAM struct {
	conv *scram.ServerConversation
}

// NewSCRAM starts an exchange for user. When known is false (no such user)
// the exchange runs against random credentials, so it fails at the proof
// like a wrong password and does not reveal which users exist.
func (v *Verifiers) NewSCRAM(user, password string, known bool) (*SCRAM, error) {
	if !known {
		user, password = "unknown-user", v.decoy
	}
	creds, err := v.credentials(user, password)
	if err != nil {
		return nil, err
	}
	// PostgreSQL clients send an empty SCRAM user name (the role comes from
	// the startup packet), so the lookup ignores the name it is given.
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return nil, fmt.Errorf("scram server: %w", err)
	}
	return &SCRAM{conv: srv.NewConversation()}, nil
}

// Step feeds one client message and returns the server's reply.
func (s *SCRAM) Step(clientMsg []byte) ([]byte, error) {
	out, err := s.conv.Step(string(clientMsg))
	return []byte(out), err
}

// Valid reports whether the client proved knowledge of the password.
func (s *SCRAM) Valid() bool { return s.conv.Done() && s.conv.Valid() }

// MD5Salt returns a random 4-byte salt for AuthenticationMD5Password.
func MD5Salt() [4]byte {
	var s [4]byte
	_, _ = rand.Read(s[:])
	return s
}

// MD5Verify checks a PasswordMessage against md5(md5(password+user)+salt),
// the format PostgreSQL's md5 method expects.
func MD5Verify(user, password string, salt [4]byte, got string) bool {
	inner := md5.Sum([]byte(password + user))
	h := hex.EncodeToString(inner[:])
	outer := md5.Sum(append([]byte(h), salt[:]...))
	want := "md5" + hex.EncodeToString(outer[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}
