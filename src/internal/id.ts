/** Item ids only need to be unique within a conversation: 2 × 52 random bits are plenty. */
export const newId = (prefix: string): string =>
  `${prefix}_${Math.random().toString(36).slice(2, 12)}${Math.random().toString(36).slice(2, 12)}`
