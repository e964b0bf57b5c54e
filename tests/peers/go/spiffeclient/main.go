// Command spiffeclient is an independent SPIFFE Workload API client built on
// go-spiffe v2. The integration tests point it at svid-broker (and at a real
// SPIRE agent, as a reference) and read the JSON it prints on stdout.
//
// Default mode:
//
//	spiffeclient -socket unix:///path/to/api.sock [-audience A]
//
// fetches the X.509 context, fetches a JWT-SVID for the audience, validates
// that token through the Workload API (ValidateJWTSVID) and offline against
// the fetched JWT bundles (jwtsvid.ParseAndValidate), and prints one JSON
// object.
//
// Token mode:
//
//	spiffeclient -socket unix:///path -validate-token T -audience A [-validate-online]
//
// fetches only the JWT bundles and validates T offline against them (and, with
// -validate-online, also through ValidateJWTSVID).
//
// Exit status: 0 success, 1 a Workload API call or a check failed, 2 bad
// usage, 3 the token given with -validate-token is invalid. Errors go to
// stderr as one line "spiffeclient: <step>: <error>"; gRPC errors keep their
// "rpc error: code = ... desc = ..." text so callers can match the status.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

const (
	exitFailure      = 1
	exitUsage        = 2
	exitInvalidToken = 3
)

type options struct {
	socket         string
	audience       string
	validateToken  string
	validateOnline bool
	timeout        time.Duration
}

// stepError names the step that failed so the message says what was being done.
type stepError struct {
	step string
	code int
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }

func fail(step string, err error) error { return &stepError{step: step, code: exitFailure, err: err} }

type x509Report struct {
	SPIFFEID           string     `json:"spiffe_id"`
	ChainLength        int        `json:"chain_length"`
	NotAfter           time.Time  `json:"not_after"`
	Hint               string     `json:"hint"`
	SVIDs              []svidInfo `json:"svids"`
	BundleTrustDomains []string   `json:"bundle_trust_domains"`
}

type svidInfo struct {
	SPIFFEID    string    `json:"spiffe_id"`
	ChainLength int       `json:"chain_length"`
	NotAfter    time.Time `json:"not_after"`
	Hint        string    `json:"hint"`
}

type jwtReport struct {
	SPIFFEID         string              `json:"spiffe_id"`
	Audience         []string            `json:"audience"`
	Expiry           time.Time           `json:"expiry"`
	Hint             string              `json:"hint"`
	Header           map[string]any      `json:"header"`
	Token            string              `json:"token"`
	ValidatedByAPI   *validation         `json:"validated_by_api,omitempty"`
	ValidatedOffline *validation         `json:"validated_offline"`
	Claims           map[string]any      `json:"claims"`
	BundleKeyIDs     map[string][]string `json:"bundle_key_ids"`
}

type validation struct {
	SPIFFEID string         `json:"spiffe_id"`
	Audience []string       `json:"audience"`
	Claims   map[string]any `json:"claims,omitempty"`
}

type fullReport struct {
	Socket                string     `json:"socket"`
	X509                  x509Report `json:"x509"`
	JWT                   jwtReport  `json:"jwt"`
	JWTBundleTrustDomains []string   `json:"jwt_bundle_trust_domains"`
}

type tokenReport struct {
	Socket                string      `json:"socket"`
	Valid                 bool        `json:"valid"`
	ValidatedOffline      *validation `json:"validated_offline"`
	ValidatedByAPI        *validation `json:"validated_by_api,omitempty"`
	JWTBundleTrustDomains []string    `json:"jwt_bundle_trust_domains"`
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "spiffeclient: %v\n", err)
		os.Exit(exitUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()

	var report any
	if opts.validateToken != "" {
		report, err = runValidateToken(ctx, opts)
	} else {
		report, err = runFull(ctx, opts)
	}
	if err != nil {
		code := exitFailure
		var se *stepError
		if errors.As(err, &se) {
			code = se.code
		}
		fmt.Fprintf(os.Stderr, "spiffeclient: %v\n", err)
		os.Exit(code)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(report); err != nil {
		fmt.Fprintf(os.Stderr, "spiffeclient: write output: %v\n", err)
		os.Exit(exitFailure)
	}
}

func parseFlags(args []string) (options, error) {
	var opts options
	fs := flag.NewFlagSet("spiffeclient", flag.ContinueOnError)
	fs.StringVar(&opts.socket, "socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"),
		"Workload API address, unix:///path or tcp://ip:port (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&opts.audience, "audience", "spiffe://example.org/spiffeclient-audience",
		"audience for the JWT-SVID (and for -validate-token)")
	fs.StringVar(&opts.validateToken, "validate-token", "",
		"validate this JWT-SVID against the fetched JWT bundles instead of running the full check")
	fs.BoolVar(&opts.validateOnline, "validate-online", false,
		"with -validate-token: also validate through the Workload API's ValidateJWTSVID")
	fs.DurationVar(&opts.timeout, "timeout", 10*time.Second, "deadline for all Workload API calls")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() != 0 {
		return opts, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if opts.socket == "" {
		return opts, errors.New("no socket: pass -socket unix:///path or set SPIFFE_ENDPOINT_SOCKET")
	}
	if opts.audience == "" {
		return opts, errors.New("-audience must not be empty")
	}
	if opts.validateOnline && opts.validateToken == "" {
		return opts, errors.New("-validate-online needs -validate-token")
	}
	return opts, nil
}

func newClient(ctx context.Context, socket string) (*workloadapi.Client, error) {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(socket))
	if err != nil {
		return nil, fail("connect to "+socket, err)
	}
	return client, nil
}

func runFull(ctx context.Context, opts options) (*fullReport, error) {
	client, err := newClient(ctx, opts.socket)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	x509Ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		return nil, fail("fetch X.509 context", err)
	}
	if len(x509Ctx.SVIDs) == 0 {
		return nil, fail("fetch X.509 context", errors.New("response holds no X.509-SVID"))
	}
	def := x509Ctx.DefaultSVID()
	rep := &fullReport{Socket: opts.socket}
	rep.X509 = x509Report{
		SPIFFEID:           def.ID.String(),
		ChainLength:        len(def.Certificates),
		NotAfter:           def.Certificates[0].NotAfter.UTC(),
		Hint:               def.Hint,
		BundleTrustDomains: []string{},
	}
	for _, s := range x509Ctx.SVIDs {
		rep.X509.SVIDs = append(rep.X509.SVIDs, svidInfo{
			SPIFFEID:    s.ID.String(),
			ChainLength: len(s.Certificates),
			NotAfter:    s.Certificates[0].NotAfter.UTC(),
			Hint:        s.Hint,
		})
	}
	for _, b := range x509Ctx.Bundles.Bundles() {
		rep.X509.BundleTrustDomains = append(rep.X509.BundleTrustDomains, b.TrustDomain().Name())
	}
	sort.Strings(rep.X509.BundleTrustDomains)
	if _, ok := x509Ctx.Bundles.Get(def.ID.TrustDomain()); !ok {
		return nil, fail("fetch X.509 context",
			fmt.Errorf("no X.509 bundle for the SVID's own trust domain %q", def.ID.TrustDomain()))
	}

	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: opts.audience})
	if err != nil {
		return nil, fail("fetch JWT-SVID", err)
	}
	token := svid.Marshal()
	header, err := decodeHeader(token)
	if err != nil {
		return nil, fail("decode JWT-SVID header", err)
	}
	rep.JWT = jwtReport{
		SPIFFEID: svid.ID.String(),
		Audience: svid.Audience,
		Expiry:   svid.Expiry.UTC(),
		Hint:     svid.Hint,
		Header:   header,
		Token:    token,
		Claims:   svid.Claims,
	}

	byAPI, err := client.ValidateJWTSVID(ctx, token, opts.audience)
	if err != nil {
		return nil, fail("validate JWT-SVID through the Workload API", err)
	}
	rep.JWT.ValidatedByAPI = toValidation(byAPI)

	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return nil, fail("fetch JWT bundles", err)
	}
	rep.JWTBundleTrustDomains, rep.JWT.BundleKeyIDs = describeJWTBundles(bundles)

	offline, err := jwtsvid.ParseAndValidate(token, bundles, []string{opts.audience})
	if err != nil {
		return nil, fail("validate JWT-SVID offline with the fetched JWT bundle", err)
	}
	rep.JWT.ValidatedOffline = toValidation(offline)

	if byAPI.ID != svid.ID || offline.ID != svid.ID {
		return nil, fail("compare identities", fmt.Errorf(
			"JWT-SVID subject %s, Workload API validation says %s, offline validation says %s",
			svid.ID, byAPI.ID, offline.ID))
	}
	return rep, nil
}

func runValidateToken(ctx context.Context, opts options) (*tokenReport, error) {
	client, err := newClient(ctx, opts.socket)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return nil, fail("fetch JWT bundles", err)
	}
	rep := &tokenReport{Socket: opts.socket}
	rep.JWTBundleTrustDomains, _ = describeJWTBundles(bundles)

	offline, err := jwtsvid.ParseAndValidate(opts.validateToken, bundles, []string{opts.audience})
	if err != nil {
		return nil, &stepError{step: "invalid token (offline validation)", code: exitInvalidToken, err: err}
	}
	rep.ValidatedOffline = toValidation(offline)

	if opts.validateOnline {
		byAPI, err := client.ValidateJWTSVID(ctx, opts.validateToken, opts.audience)
		if err != nil {
			return nil, &stepError{step: "invalid token (Workload API validation)", code: exitInvalidToken, err: err}
		}
		rep.ValidatedByAPI = toValidation(byAPI)
	}
	rep.Valid = true
	return rep, nil
}

func toValidation(s *jwtsvid.SVID) *validation {
	return &validation{SPIFFEID: s.ID.String(), Audience: s.Audience, Claims: s.Claims}
}

// describeJWTBundles lists the trust domain names (example.org) and, per
// trust domain, the key ids, both sorted.
func describeJWTBundles(set *jwtbundle.Set) ([]string, map[string][]string) {
	tds := []string{}
	kids := map[string][]string{}
	for _, b := range set.Bundles() {
		td := b.TrustDomain().Name()
		tds = append(tds, td)
		ids := []string{}
		for kid := range b.JWTAuthorities() {
			ids = append(ids, kid)
		}
		sort.Strings(ids)
		kids[td] = ids
	}
	sort.Strings(tds)
	return tds, kids
}

// decodeHeader returns the JOSE header of a compact JWS, so tests can check
// that it holds exactly alg, kid and typ.
func decodeHeader(token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("token has %d parts, want 3", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, err
	}
	header := map[string]any{}
	if err := json.Unmarshal(raw, &header); err != nil {
		return nil, err
	}
	return header, nil
}
