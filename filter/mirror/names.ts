// Names that end up in Envoy stat names (service, replica): [A-Za-z0-9_-], 1 to 64 characters.

export const MAX_NAME_LENGTH = 64;

export function isNameChar(c: i32): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x5f || c == 0x2d;
}

export function isName(s: string): bool {
  if (s.length == 0 || s.length > MAX_NAME_LENGTH) return false;
  for (let i = 0; i < s.length; i++) if (!isNameChar(s.charCodeAt(i))) return false;
  return true;
}

/** A stat-safe version of a name that came from outside (the relay): bad characters become '_'. */
export function sanitizeName(raw: string): string {
  let out = "";
  const n = min(raw.length, MAX_NAME_LENGTH);
  for (let i = 0; i < n; i++) out += isNameChar(raw.charCodeAt(i)) ? String.fromCharCode(raw.charCodeAt(i)) : "_";
  return out.length > 0 ? out : "_";
}
