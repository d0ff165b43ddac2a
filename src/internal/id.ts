/**
 * Item ids only need to be unique within a conversation, and a conversation may outlive a process
 * (a stored chat): a random prefix per process (50 bits) and a counter. Cheap on the hot path:
 * one short string per item, no random numbers.
 */
const prefix = Math.random().toString(36).slice(2, 12).padEnd(10, "0")
let counter = 0

export const newId = (kind: string): string => `${kind}_${prefix}${(counter++).toString(36)}`
