package auth

import (
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/megacomet/megacomet/config"
)

// signed is an HS256 token with the tests' secret over raw claims, as
// another issuer would write them: for alice, valid for an hour unless
// exp is given (nil: none).
func signed(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	claims["sub"] = "alice"
	if exp, ok := claims["exp"]; !ok {
		claims["exp"] = time.Now().Add(time.Hour).Unix()
	} else if exp == nil {
		delete(claims, "exp")
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// With auth.audience and auth.issuer set, a token must carry both: aud as
// a string or in an array; anything else is a 401 naming which.
func TestAudienceAndIssuer(t *testing.T) {
	v, err := New(&config.Auth{Secret: secret, Required: true, Audience: "push", Issuer: "https://app.example"})
	if err != nil {
		t.Fatal(err)
	}
	const iss = "https://app.example"
	for _, tc := range []struct {
		name   string
		claims jwt.MapClaims
		want   *Refusal
	}{
		{"aud string", jwt.MapClaims{"aud": "push", "iss": iss}, nil},
		{"aud in an array", jwt.MapClaims{"aud": []string{"billing", "push"}, "iss": iss}, nil},
		{"another aud", jwt.MapClaims{"aud": "billing", "iss": iss}, ErrAudience},
		{"aud array without it", jwt.MapClaims{"aud": []string{"billing", "mail"}, "iss": iss}, ErrAudience},
		{"no aud", jwt.MapClaims{"iss": iss}, ErrAudience},
		{"empty aud", jwt.MapClaims{"aud": "", "iss": iss}, ErrAudience},
		{"another iss", jwt.MapClaims{"aud": "push", "iss": "https://evil.example"}, ErrIssuer},
		{"no iss", jwt.MapClaims{"aud": "push"}, ErrIssuer},
		{"neither", jwt.MapClaims{}, ErrIssuer},
		{"no exp still says so", jwt.MapClaims{"exp": nil}, ErrNoExpiry},
		{"expired still says so", jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}, ErrExpired},
	} {
		_, err := v.Verify(signed(t, tc.claims), "alice")
		if tc.want == nil && err != nil || tc.want != nil && err != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if ErrAudience.Status != 401 || ErrIssuer.Status != 401 {
		t.Error("aud and iss refusals are 401: come back with a token for this app")
	}
	// Unset, neither is checked.
	if _, err := hs(t).Verify(signed(t, jwt.MapClaims{"aud": "billing", "iss": "whoever"}), "alice"); err != nil {
		t.Errorf("aud and iss checked when not configured: %v", err)
	}
}

// A token without a channels claim, or with "channels": null, joins what
// auth.default_channels allows (none by default); every channel takes an
// explicit ["*"]. A verified token's claim is never nil, the "no token"
// value.
func TestChannelsClaimAbsent(t *testing.T) {
	none := hs(t)
	news, err := New(&config.Auth{Secret: secret, Required: true, DefaultChannels: []string{"news", "team-*"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		v       *Verifier
		claims  jwt.MapClaims
		allowed []string
		refused []string
	}{
		{"absent", none, jwt.MapClaims{}, nil, []string{"news", "x"}},
		{"null", none, jwt.MapClaims{"channels": nil}, nil, []string{"news", "x"}},
		{"empty", none, jwt.MapClaims{"channels": []string{}}, nil, []string{"news"}},
		{"star", none, jwt.MapClaims{"channels": []string{"*"}}, []string{"news", "x"}, nil},
		{"absent, defaults", news, jwt.MapClaims{}, []string{"news", "team-1"}, []string{"sport", "team"}},
		{"null, defaults", news, jwt.MapClaims{"channels": nil}, []string{"news"}, []string{"sport"}},
		{"a claim beats the defaults", news, jwt.MapClaims{"channels": []string{"sport"}}, []string{"sport"}, []string{"news"}},
	} {
		c, err := tc.v.Verify(signed(t, tc.claims), "alice")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.Channels == nil {
			t.Errorf("%s: a verified token's channels are nil (any channel)", tc.name)
		}
		for _, ch := range tc.allowed {
			if !c.Allows(ch) || !Allows(c.Channels, ch) {
				t.Errorf("%s: %q refused", tc.name, ch)
			}
		}
		for _, ch := range tc.refused {
			if c.Allows(ch) || Allows(c.Channels, ch) {
				t.Errorf("%s: %q allowed", tc.name, ch)
			}
		}
	}
}

// MintClaims keeps the aud and iss it is given: `megacomet token` stamps
// the config's.
func TestMintKeepsAudienceAndIssuer(t *testing.T) {
	v, _ := New(&config.Auth{Secret: secret, Required: true, Audience: "push", Issuer: "me"})
	c := Claims{Channels: []string{"news"}}
	c.Audience, c.Issuer = jwt.ClaimStrings{"push"}, "me"
	tok, err := MintClaims([]byte(secret), "alice", c, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(tok, "alice")
	if err != nil || !slices.Equal(got.Channels, []string{"news"}) || got.Subject != "alice" || got.Issuer != "me" || !slices.Equal(got.Audience, jwt.ClaimStrings{"push"}) {
		t.Errorf("%v %+v", err, got)
	}
}
