"""Who is calling and what they may do: tokens, ACL policies and the AppRole method."""
