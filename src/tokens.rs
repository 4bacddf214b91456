//! Device tokens: HS256 JWTs whose `sub` is the device id and whose `exp` is
//! required. Minted by `herald token`, checked on every stream request when
//! `auth.devices = "token"`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_actors::DeviceId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
}

/// The audience herald mints and requires, so a JWT minted for another
/// service with a shared secret does not open a stream.
const AUDIENCE: &str = "herald-device";

/// Why a token was not accepted. Logged as `reason=`; never logs the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Missing,
    Expired,
    Invalid,
    /// A valid token, for another device.
    WrongDevice,
}

impl TokenRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Expired => "expired",
            Self::Invalid => "invalid",
            Self::WrongDevice => "wrong_device",
        }
    }
}

/// Mints and checks device tokens with one secret.
pub struct DeviceTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl DeviceTokens {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `device`, valid for `ttl` from now.
    pub fn mint(&self, device: &DeviceId, ttl: Duration) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: device.as_str().to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an HMAC key cannot fail")
    }

    /// Accepts `token` only as a current token for `device`.
    pub fn check(&self, token: &str, device: &DeviceId) -> Result<(), TokenRefusal> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenRefusal::Expired,
                _ => TokenRefusal::Invalid,
            })?
            .claims;
        if claims.sub == device.as_str() {
            Ok(())
        } else {
            Err(TokenRefusal::WrongDevice)
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    #[test]
    fn a_token_opens_its_own_device_only() {
        let tokens = DeviceTokens::new("a-secret-of-at-least-32-bytes-long!!");
        let token = tokens.mint(&device("edge-1"), Duration::from_secs(60));
        assert_eq!(tokens.check(&token, &device("edge-1")), Ok(()));
        assert_eq!(
            tokens.check(&token, &device("edge-2")),
            Err(TokenRefusal::WrongDevice)
        );
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let tokens = DeviceTokens::new("a-secret-of-at-least-32-bytes-long!!");
        let other = DeviceTokens::new("another-secret-of-at-least-32-bytes!");
        let claims = Claims {
            sub: "edge-1".to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: unix_now() - 120,
            exp: unix_now() - 60,
        };
        let expired = jsonwebtoken::encode(&Header::default(), &claims, &tokens.encoding).unwrap();
        assert_eq!(
            tokens.check(&expired, &device("edge-1")),
            Err(TokenRefusal::Expired)
        );
        let forged = other.mint(&device("edge-1"), Duration::from_secs(60));
        assert_eq!(
            tokens.check(&forged, &device("edge-1")),
            Err(TokenRefusal::Invalid)
        );
        for garbage in ["", "a.b.c", "not a token", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(
                tokens.check(garbage, &device("edge-1")),
                Err(TokenRefusal::Invalid)
            );
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5_000))]

            #[test]
            fn no_text_is_accepted_as_a_token_unless_it_was_minted(raw in "\\PC{0,300}|[A-Za-z0-9_-]{10,60}\\.[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{0,50}") {
                let tokens = DeviceTokens::new("a-secret-of-at-least-32-bytes-long!!");
                prop_assert!(tokens.check(&raw, &device("edge-1")).is_err());
            }

            #[test]
            fn a_minted_token_with_any_one_character_changed_is_refused(position: prop::sample::Index, replacement in "[A-Za-z0-9_.-]") {
                let tokens = DeviceTokens::new("a-secret-of-at-least-32-bytes-long!!");
                let token = tokens.mint(&device("edge-1"), Duration::from_secs(60));
                let at = position.index(token.len());
                let mut changed = token.clone();
                changed.replace_range(at..=at, &replacement);
                prop_assume!(changed != token);
                prop_assert!(tokens.check(&changed, &device("edge-1")).is_err(), "{changed}");
            }
        }
    }
}
